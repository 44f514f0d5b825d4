"""The Hugging Face <-> project parameter table: one row per tensor family, no ad hoc renames.

A row names the HF key template, the project's param path template, the per-tensor hook and
whether the tensor is one layer of a scanned stack. `{i}` is a layer index (HF side only: the
project stacks layers on axis 0); `{a}`, `{b}`, `{c}` are other indices copied verbatim.
The same rows drive import (`hf_to_params`) and export (`params_to_hf`), so the two directions
cannot drift apart.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Callable, Iterator, Mapping

import numpy as np

from depthvlm_jax.model.config import ModelConfig
from depthvlm_jax.model.vision import block_segments


@dataclasses.dataclass(frozen=True)
class Hook:
  """Tensor transform HF -> project (`load`) and its exact inverse (`save`)."""

  load: Callable[[np.ndarray, ModelConfig], np.ndarray]
  save: Callable[[np.ndarray, ModelConfig], np.ndarray]


def _patch_embed_save(x, cfg):
  v = cfg.vision
  return x.T.reshape(v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)


HOOKS = {
    "copy": Hook(lambda x, c: x, lambda x, c: x),
    "linear": Hook(lambda x, c: x.T, lambda x, c: x.T),  # torch [out, in] <-> [in, out]
    "patch_embed": Hook(lambda x, c: x.reshape(x.shape[0], -1).T, _patch_embed_save),  # Conv3d as a matmul
    "conv": Hook(lambda x, c: x.transpose(2, 3, 1, 0), lambda x, c: x.transpose(3, 2, 0, 1)),  # OIHW <-> HWIO
    "deconv": Hook(lambda x, c: x.transpose(2, 3, 0, 1), lambda x, c: x.transpose(2, 3, 0, 1)),  # IOHW <-> HWIO
}


@dataclasses.dataclass(frozen=True)
class Row:
  hf: str
  params: str
  hook: str = "copy"
  stack: str | None = None  # "text" | "vision": one layer of a scanned stack


def _linear(hf_prefix, path_prefix, stack=None, bias=True):
  rows = [Row(f"{hf_prefix}.weight", f"{path_prefix}/kernel", "linear", stack)]
  if bias:
    rows.append(Row(f"{hf_prefix}.bias", f"{path_prefix}/bias", "copy", stack))
  return rows


def _norm(hf_prefix, path_prefix, stack=None, bias=True):
  rows = [Row(f"{hf_prefix}.weight", f"{path_prefix}/scale", "copy", stack)]
  if bias:
    rows.append(Row(f"{hf_prefix}.bias", f"{path_prefix}/bias", "copy", stack))
  return rows


def _conv(hf_prefix, path_prefix, hook="conv", bias=True):
  rows = [Row(f"{hf_prefix}.weight", f"{path_prefix}/kernel", hook)]
  if bias:
    rows.append(Row(f"{hf_prefix}.bias", f"{path_prefix}/bias"))
  return rows


def _merger(hf_prefix, path_prefix):
  return (_norm(f"{hf_prefix}.norm", f"{path_prefix}/norm") + _linear(f"{hf_prefix}.linear_fc1", f"{path_prefix}/linear_fc1")
          + _linear(f"{hf_prefix}.linear_fc2", f"{path_prefix}/linear_fc2"))


def _qwen3_vl_rows() -> list[Row]:
  vb, vp = "model.visual.blocks.{i}", "visual/blocks_{s}"
  tl, tp = "model.language_model.layers.{i}", "language_model/layers"
  rows = [
      *_linear("model.visual.patch_embed.proj", "visual/patch_embed"),
      Row("model.visual.pos_embed.weight", "visual/pos_embed"),
      *_norm(f"{vb}.norm1", f"{vp}/norm1", "vision"),
      *_norm(f"{vb}.norm2", f"{vp}/norm2", "vision"),
      *_linear(f"{vb}.attn.qkv", f"{vp}/attn/qkv", "vision"),
      *_linear(f"{vb}.attn.proj", f"{vp}/attn/proj", "vision"),
      *_linear(f"{vb}.mlp.linear_fc1", f"{vp}/mlp/linear_fc1", "vision"),
      *_linear(f"{vb}.mlp.linear_fc2", f"{vp}/mlp/linear_fc2", "vision"),
      *_merger("model.visual.merger", "visual/merger"),
      *_merger("model.visual.deepstack_merger_list.{a}", "visual/deepstack_merger_{a}"),
      Row("model.language_model.embed_tokens.weight", "embed_tokens/embedding"),
      *[r for p in ("q", "k", "v", "o") for r in _linear(f"{tl}.self_attn.{p}_proj", f"{tp}/self_attn/{p}_proj", "text", False)],
      *[r for p in ("q", "k") for r in _norm(f"{tl}.self_attn.{p}_norm", f"{tp}/self_attn/{p}_norm", "text", False)],
      *[r for p in ("gate", "up", "down") for r in _linear(f"{tl}.mlp.{p}_proj", f"{tp}/mlp/{p}_proj", "text", False)],
      *_norm(f"{tl}.input_layernorm", f"{tp}/input_layernorm", "text", False),
      *_norm(f"{tl}.post_attention_layernorm", f"{tp}/post_attention_layernorm", "text", False),
      *_norm("model.language_model.norm", "language_model/norm", bias=False),
      *_linear("lm_head", "lm_head", bias=False),
  ]
  # The patch embedding is a Conv3d in HF: its own hook, not a plain transpose.
  rows[0] = Row("model.visual.patch_embed.proj.weight", "visual/patch_embed/kernel", "patch_embed")
  return rows


def _depth_head_rows() -> list[Row]:
  d, dp = "depth_head", "depth_head"
  rows = [
      *_norm(f"{d}.norm", f"{dp}/norm"),
      *_conv(f"{d}.projects.{{a}}", f"{dp}/projects_{{a}}"),
      *_conv(f"{d}.resize_layers.{{a}}", f"{dp}/resize_layers_{{a}}", "deconv"),
      *_conv(f"{d}.scratch.layer{{a}}_rn", f"{dp}/scratch/layer{{a}}_rn", bias=False),
      *_conv(f"{d}.scratch.refinenet{{a}}.out_conv", f"{dp}/scratch/refinenet{{a}}/out_conv"),
      *_conv(f"{d}.scratch.refinenet{{a}}.resConfUnit{{b}}.conv{{c}}", f"{dp}/scratch/refinenet{{a}}/resConfUnit{{b}}/conv{{c}}"),
      *_conv(f"{d}.scratch.output_conv1", f"{dp}/scratch/output_conv1"),
      *_conv(f"{d}.scratch.output_conv2.{{a}}", f"{dp}/scratch/output_conv2_{{a}}"),
      # per-token MLP ablation head
      *_linear(f"{d}.mlp.{{a}}", f"{dp}/mlp_{{a}}"),
  ]
  return rows


ROWS: tuple[Row, ...] = tuple(_qwen3_vl_rows() + _depth_head_rows())


def _regex(template: str) -> re.Pattern:
  out, pos = [], 0
  for m in re.finditer(r"\{(\w)\}", template):
    out.append(re.escape(template[pos:m.start()]))
    out.append(f"(?P<{m.group(1)}>\\d+)")
    pos = m.end()
  out.append(re.escape(template[pos:]))
  return re.compile("".join(out) + "$")


_HF_RE = [(_regex(r.hf), r) for r in ROWS]
_PARAM_RE = [(_regex(r.params), r) for r in ROWS]


def _match(table, key):
  for rx, row in table:
    m = rx.match(key)
    if m:
      return row, m.groupdict()
  return None, None


def _vision_slot(cfg: ModelConfig, i: int) -> tuple[int, int]:
  for s, (start, end) in enumerate(block_segments(cfg.vision)):
    if start <= i < end:
      return s, i - start
  raise KeyError(f"vision block {i} is outside depth {cfg.vision.depth}")


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else k
    if isinstance(v, Mapping):
      out.update(flatten(v, path))
    else:
      out[path] = v
  return out


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def hf_to_params(tensors: Mapping[str, np.ndarray], cfg: ModelConfig) -> dict:
  """HF state dict (numpy) -> nested project params. Unknown keys raise, naming them."""
  flat: dict[str, np.ndarray] = {}
  stacked: dict[str, dict[int, tuple[str, tuple, np.ndarray]]] = {}  # layer -> (HF key, HF shape, x)
  unknown = []
  for key, value in tensors.items():
    row, groups = _match(_HF_RE, key)
    if row is None:
      unknown.append(key)
      continue
    if key == "lm_head.weight" and cfg.tie_word_embeddings:
      continue  # a tied checkpoint may carry a copy of the embedding
    x = HOOKS[row.hook].load(np.asarray(value), cfg)
    if row.stack is None:
      flat[row.params.format(**groups)] = x
      continue
    i = int(groups.pop("i"))
    if row.stack == "vision":
      groups["s"], j = _vision_slot(cfg, i)
    else:
      j = i
    stacked.setdefault(row.params.format(**groups), {})[j] = (key, np.shape(value), x)
  if unknown:
    raise KeyError(f"{len(unknown)} checkpoint tensors have no mapping, e.g. {unknown[:5]}")
  for path, layers in stacked.items():
    missing = sorted(set(range(max(layers) + 1)) - set(layers))
    if missing:
      raise KeyError(f"{path}: layers {missing} are missing from the checkpoint")
    shapes = collections.Counter(hf_shape for _, hf_shape, _ in layers.values())
    if len(shapes) > 1:
      common = shapes.most_common(1)[0][0]
      key, hf_shape, _ = next(layers[j] for j in sorted(layers) if layers[j][1] != common)
      raise ValueError(f"tensor {key} has shape {list(hf_shape)} where the other layers' have {list(common)}")
    flat[path] = np.stack([layers[j][2] for j in range(len(layers))])
  return unflatten(flat)


def params_to_hf(params: Mapping, cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
  """Nested project params -> (HF key, tensor) pairs in the HF layout."""
  for path, value in flatten(params).items():
    row, groups = _match(_PARAM_RE, path)
    if row is None:
      raise KeyError(f"parameter {path} has no Hugging Face mapping")
    value = np.asarray(value)
    if row.stack is None:
      yield row.hf.format(**groups), HOOKS[row.hook].save(value, cfg)
      continue
    offset = block_segments(cfg.vision)[int(groups.pop("s"))][0] if row.stack == "vision" else 0
    for j in range(value.shape[0]):
      yield row.hf.format(i=offset + j, **groups), HOOKS[row.hook].save(value[j], cfg)

"""Model FLOPs of a training step from the config, for MFU.

Counted from the config's shapes rather than read from XLA's cost analysis, which counts the
body of a scanned layer stack once, not once per layer: 2*m*n*k per matmul, 2*H*W*k*k*Cin*Cout per
convolution (padding included, as the hardware computes it), attention as the full L x L
products plus its softmax (causal masking saves nothing in the reference implementation).
Other elementwise work (norms, activations, RoPE, residuals) is left out: a few percent at
real widths. A training step is the forward plus 2x the forward of each part that trains (a
frozen part runs forward only). tests/test_flops.py checks this against XLA's cost analysis.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax

from depthvlm_jax.convert.keymap import flatten
from depthvlm_jax.convert.pretrained import abstract_params
from depthvlm_jax.model.config import DepthHeadConfig, ModelConfig, TextConfig, VisionConfig
from depthvlm_jax.model.depth_head import strided_size
from depthvlm_jax.train.optimizer import matches

# Parameter path prefixes of each part.
PARTS = {"vision": ("visual/",), "llm": ("embed_tokens/", "language_model/", "lm_head/"), "head": ("depth_head/",)}

# Dense bf16 peak FLOP/s per chip by jax device_kind (vendor figures), for MFU.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5": 459e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12, "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12, "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12,
}

# Softmax FLOPs per attention score: scale, max, subtract, sum, divide (exp is a transcendental).
SOFTMAX_FLOPS = 5


@dataclasses.dataclass(frozen=True)
class StepFlops:
  forward: float  # the whole model forward (with the head when it runs)
  vision: float
  llm: float
  head: float
  train: float  # forward + 2 x the trainable parts' forward


def _dense(rows: int, fan_in: int, fan_out: int) -> float:
  return 2.0 * rows * fan_in * fan_out


def _attention(rows: int, keys: int, width: int, heads: int) -> float:
  """QK^T and PV over all heads (width = heads * head_dim), and the softmax of every score."""
  return 2 * _dense(rows, keys, width) + SOFTMAX_FLOPS * rows * keys * heads


def _conv(b: int, hw: Sequence[int], k: int, cin: int, cout: int) -> float:
  return _dense(b * hw[0] * hw[1], k * k * cin, cout)


def _resize(b: int, in_hw: Sequence[int], out_hw: Sequence[int], c: int) -> float:
  """model/resize.py: per axis, a two-tap weighted sum (3 FLOPs) per output element."""
  return 3.0 * b * c * (out_hw[0] * in_hw[1] + out_hw[0] * out_hw[1])


def vision_flops(v: VisionConfig, batch: int, image_hw: Sequence[int]) -> float:
  """Patch embedding, the blocks (each patch attends to its image's patches), and the final and
  DeepStack 2x2 mergers."""
  patches = (image_hw[0] // v.patch_size) * (image_hw[1] // v.patch_size)
  n, d, m = batch * patches, v.hidden_size, v.spatial_merge_size ** 2
  embed = _dense(n, v.in_channels * v.temporal_patch_size * v.patch_size ** 2, d)
  block = (_dense(n, d, 3 * d) + _attention(n, patches, d, v.num_heads) + _dense(n, d, d)
           + 2 * _dense(n, d, v.intermediate_size))
  merger = _dense(n // m, d * m, d * m) + _dense(n // m, d * m, v.out_hidden_size)
  return embed + v.depth * block + (1 + len(v.deepstack_visual_indexes)) * merger


def llm_flops(t: TextConfig, batch: int, seq_len: int) -> float:
  """Decoder layers (GQA projections, attention over the sequence, SwiGLU) and the vocabulary
  projection of every position."""
  n, d, hd = batch * seq_len, t.hidden_size, t.head_dim
  q, kv = t.num_attention_heads * hd, t.num_key_value_heads * hd
  layer = (_dense(n, d, q + 2 * kv) + _attention(n, seq_len, q, t.num_attention_heads) + _dense(n, q, d)
           + 3 * _dense(n, d, t.intermediate_size))
  return t.num_hidden_layers * layer + _dense(n, d, t.vocab_size)


def head_flops(h: DepthHeadConfig, width: int, batch: int, image_hw: Sequence[int], token_size: int) -> float:
  """The depth head on a token grid of LLM-width features, output at the image size."""
  gh, gw = image_hw[0] // token_size, image_hw[1] // token_size
  if h.kind == "mlp":
    tokens = batch * gh * gw
    return _dense(tokens, width, h.mlp_hidden) + _dense(tokens, h.mlp_hidden, token_size ** 2)
  f, b = h.features, batch
  size = lambda s: (gh * s, gw * s)
  total = 0.0
  for k, ch in enumerate(h.out_channels):  # level k: 8x, 4x, 2x, 1x the token grid
    s = 8 >> k if k < 3 else 1
    total += _conv(b, size(1), 1, width, ch)  # projects_k
    if k < 3:
      total += _conv(b, size(s), 1, ch, ch)  # resize_layers_k (kernel = stride: one tap per pixel)
    total += _conv(b, size(s), 3, ch, f)  # layer{k+1}_rn
    # refinenet{k+1}: residual conv units (the coarsest has no skip), 2x resize, 1x1 out_conv.
    total += (2 if k == 3 else 4) * _conv(b, size(s), 3, f, f)
    total += _resize(b, size(s), size(2 * s), f) + _conv(b, size(2 * s), 1, f, f)
  last = strided_size(image_hw, h.output_stride)  # where output_conv2 runs
  total += _conv(b, size(16), 3, f, f // 2) + _resize(b, size(16), last, f // 2)  # output_conv1
  total += _conv(b, last, 3, f // 2, 32) + _conv(b, last, 1, 32, 1)  # output_conv2
  return total + (_resize(b, last, image_hw, 1) if h.output_stride != 1 else 0.0)


def step_flops(cfg: ModelConfig, batch_size: int, image_hw: Sequence[int], seq_len: int,
               trainable: Sequence[str], with_depth: bool = True) -> StepFlops:
  """FLOPs of one training step on a batch of this shape (per step, all devices together).

  seq_len counts every token, the image placeholders included; trainable: the optimizer's
  parameter path patterns.
  """
  parts = {"vision": vision_flops(cfg.vision, batch_size, image_hw),
           "llm": llm_flops(cfg.text, batch_size, seq_len),
           "head": (head_flops(cfg.depth_head, cfg.text.hidden_size, batch_size, image_hw, cfg.vision.token_size)
                    if with_depth and cfg.depth_head is not None else 0.0)}
  paths = list(flatten(nn.unbox(abstract_params(cfg))))
  trains = {name: any(matches(k, trainable) for k in paths if k.startswith(prefixes))
            for name, prefixes in PARTS.items()}
  forward = sum(parts.values())
  return StepFlops(forward=forward, train=forward + 2 * sum(f for name, f in parts.items() if trains[name]),
                   **parts)


def peak_flops(devices=None) -> float | None:
  """The summed peak FLOP/s of the devices, or None when their kind is unknown (e.g. CPU)."""
  devices = jax.devices() if devices is None else devices
  peaks = [PEAK_FLOPS.get(d.device_kind) for d in devices]
  return None if any(p is None for p in peaks) else float(sum(peaks))

"""`load_pretrained` / `save_pretrained`: Hugging Face directories in and out.

Loading validates every tensor against the model's abstract parameters (names and shapes)
before anything is returned, and can place each tensor straight onto a mesh. Saving never
removes a file it did not write (see `depthvlm_jax.outputs`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from depthvlm_jax import outputs
from depthvlm_jax.convert import hf_config, keymap, safetensors_io
from depthvlm_jax.convert.safetensors_io import CheckpointError
from depthvlm_jax.model.config import ModelConfig
from depthvlm_jax.model.vlm import DepthVLM

CONFIG = "config.json"
KIND = "checkpoint"  # the outputs marker of an export


def _dummy_inputs(cfg: ModelConfig, image_hw):
  n = (image_hw[0] // cfg.vision.token_size) * (image_hw[1] // cfg.vision.token_size)
  return jnp.full((1, n), cfg.image_token_id, jnp.int32), jnp.zeros((1, *image_hw, 3), jnp.float32)


def abstract_params(cfg: ModelConfig, image_hw=(64, 64)):
  """Boxed ShapeDtypeStructs of the model's params (nothing allocated)."""
  return jax.eval_shape(lambda: DepthVLM(cfg).init(jax.random.key(0), *_dummy_inputs(cfg, image_hw)))["params"]


def init_params(cfg: ModelConfig, seed: int = 0, image_hw=(64, 64)):
  """Randomly initialised, unboxed params (for tests, demos and from-scratch runs).

  Uses the "rbg" PRNG: with hundreds of parameter tensors, threefry's compile time dominates.
  """
  init = jax.jit(DepthVLM(cfg).init)
  return nn.unbox(init(jax.random.key(seed, impl="rbg"), *_dummy_inputs(cfg, image_hw))["params"])


def _check_against_model(params, cfg: ModelConfig) -> None:
  expected = keymap.flatten(nn.unbox(abstract_params(cfg)))
  got = keymap.flatten(params)
  missing = sorted(set(expected) - set(got))
  extra = sorted(set(got) - set(expected))
  if missing or extra:
    raise KeyError(f"the checkpoint does not fit its config: missing {missing[:6]}, unexpected {extra[:6]}")
  bad = [(k, got[k].shape, expected[k].shape) for k in expected if tuple(got[k].shape) != tuple(expected[k].shape)]
  if bad:
    raise ValueError(f"tensor shapes differ from the config (param, checkpoint, expected): {bad[:6]}")


def _read_config(path: str) -> dict:
  cfg_file = os.path.join(path, CONFIG)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} does not exist or is not a directory: expected a Hugging Face Qwen3-VL / "
                            "DepthVLM checkpoint directory")
  if not os.path.exists(cfg_file):
    raise FileNotFoundError(f"{path} has no {CONFIG}: expected a Hugging Face Qwen3-VL / DepthVLM directory")
  try:
    with open(cfg_file, encoding="utf-8") as f:
      hf = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from e
  if not isinstance(hf, dict) or not all(isinstance(hf.get(k), dict) for k in ("text_config", "vision_config")):
    kind = hf.get("model_type") if isinstance(hf, dict) else type(hf).__name__
    raise CheckpointError(f"{cfg_file}: not a Qwen3-VL config (model_type {kind!r}, no text_config and "
                          "vision_config): depthvlm_jax reads Qwen3-VL and DepthVLM checkpoints")
  return hf


def load_pretrained(path: str, *, shardings=None, **overrides: Any) -> tuple[DepthVLM, dict]:
  """A Hugging Face Qwen3-VL or DepthVLM directory -> (model, params).

  `overrides` replace ModelConfig fields (e.g. dtype="bfloat16", param_dtype, remat_policy,
  depth_head=None to drop a head). `shardings`, a tree like the params (see
  `sharding.param_shardings`), places each tensor on its devices as it is converted.
  Every failure names the file: CheckpointError for a damaged or foreign checkpoint.
  """
  hf = _read_config(path)
  shapes = safetensors_io.tensor_shapes(path)
  try:
    head = hf_config.depth_head_from_tensors(shapes, hf)
    cfg = hf_config.from_hf(hf, depth_head=head, **overrides)
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{os.path.join(path, CONFIG)}: not a usable Qwen3-VL config: "
                          f"{'missing field ' if isinstance(e, KeyError) else ''}{e}") from e
  tensors = dict(safetensors_io.read_tensors(path))
  if cfg.depth_head is None:
    tensors = {k: v for k, v in tensors.items() if not k.startswith("depth_head.")}
  try:
    params = keymap.hf_to_params(tensors, cfg)
    _check_against_model(params, cfg)
  except (KeyError, ValueError) as e:
    raise CheckpointError(f"{path}: {e.args[0] if e.args else e}") from e
  dtype = jnp.dtype(cfg.param_dtype)
  if shardings is None:
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
  else:
    params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x).astype(dtype), s), params, shardings)
  return DepthVLM(cfg), params


def check_destination(path, overwrite: bool = False) -> bool:
  """May an export be written at `path`? (see `outputs.check_destination`)"""
  return outputs.check_destination(path, KIND, overwrite, replaces="its config.json and weights are replaced")


def save_pretrained(path: str, model: DepthVLM, params, *, dtype: Optional[str] = None,
                    max_shard_bytes: int = 5 * 2**30, overwrite: bool = False) -> None:
  """Writes config.json + (sharded) safetensors that `transformers` and DepthVLM's code load.

  `dtype` ("float32", "bfloat16") defaults to the params' own dtype. A new directory appears
  complete or not at all. An existing one is written into only if it is empty, an earlier
  export, or `overwrite` is set; then only config.json and the weight files are replaced, so
  an in-place conversion keeps the tokenizer, processor and README beside them.
  """
  cfg = model.cfg
  leaves = jax.tree.leaves(params)
  np_dtype = np.dtype(jnp.dtype(dtype)) if dtype else np.asarray(leaves[0][..., :0]).dtype
  hf = hf_config.to_hf(cfg, torch_dtype=str(jnp.dtype(np_dtype)))
  dst = Path(path).absolute()
  exists = check_destination(dst, overwrite)
  host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)).astype(np_dtype), params)
  dst.parent.mkdir(parents=True, exist_ok=True)
  outputs.clean_partials(dst.parent)
  tmp = outputs.partial_path(dst)
  tmp.mkdir()
  umask = os.umask(0)
  os.umask(umask)
  try:
    safetensors_io.write_tensors(str(tmp), keymap.params_to_hf(host, cfg), max_shard_bytes)
    with open(tmp / CONFIG, "w") as f:
      json.dump(hf, f, indent=2)
    outputs.write_marker(tmp, KIND)
    for name in os.listdir(tmp):  # mkdtemp and safetensors create owner-only files
      os.chmod(tmp / name, 0o666 & ~umask)
    tmp.chmod(0o777 & ~umask)
    if not exists:
      os.replace(tmp, dst)
      return
    new = os.listdir(tmp)
    for name in sorted(new, key=lambda n: (n == CONFIG, n == outputs.MARKER)):  # weights, config, marker
      os.replace(tmp / name, dst / name)
    for name in os.listdir(dst):
      if safetensors_io.is_weight_file(name) and name not in new:
        os.remove(dst / name)  # an earlier export's shards the new index no longer names
  finally:
    shutil.rmtree(tmp, ignore_errors=True)

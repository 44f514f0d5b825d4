"""`load_pretrained` / `save_pretrained`: Hugging Face directories in and out.

Loading validates every tensor against the model's abstract parameters (names and shapes)
before anything is returned, and can place each tensor straight onto a mesh. Saving is atomic:
the directory appears complete or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from depthvlm_jax.convert import hf_config, keymap, safetensors_io
from depthvlm_jax.model.config import ModelConfig
from depthvlm_jax.model.vlm import DepthVLM

CONFIG = "config.json"


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


def _check_against_model(params, cfg: ModelConfig, path: str) -> None:
  expected = keymap.flatten(nn.unbox(abstract_params(cfg)))
  got = keymap.flatten(params)
  missing = sorted(set(expected) - set(got))
  extra = sorted(set(got) - set(expected))
  if missing or extra:
    raise KeyError(f"{path}: checkpoint does not fit the model config: missing {missing[:6]}, unexpected {extra[:6]}")
  bad = [(k, got[k].shape, expected[k].shape) for k in expected if tuple(got[k].shape) != tuple(expected[k].shape)]
  if bad:
    raise ValueError(f"{path}: tensor shapes differ from the config (param, checkpoint, expected): {bad[:6]}")


def load_pretrained(path: str, *, shardings=None, **overrides: Any) -> tuple[DepthVLM, dict]:
  """A Hugging Face Qwen3-VL or DepthVLM directory -> (model, params).

  `overrides` replace ModelConfig fields (e.g. dtype="bfloat16", param_dtype, remat_policy,
  depth_head=None to drop a head). `shardings`, a tree like the params (see
  `sharding.param_shardings`), places each tensor on its devices as it is converted.
  """
  cfg_file = os.path.join(path, CONFIG)
  if not os.path.exists(cfg_file):
    raise FileNotFoundError(f"{path} has no {CONFIG}: expected a Hugging Face Qwen3-VL / DepthVLM directory")
  with open(cfg_file) as f:
    hf = json.load(f)
  shapes = safetensors_io.tensor_shapes(path)
  head = hf_config.depth_head_from_tensors(shapes, hf)
  cfg = hf_config.from_hf(hf, depth_head=head, **overrides)
  tensors = dict(safetensors_io.read_tensors(path))
  if cfg.depth_head is None:
    tensors = {k: v for k, v in tensors.items() if not k.startswith("depth_head.")}
  params = keymap.hf_to_params(tensors, cfg)
  _check_against_model(params, cfg, path)
  dtype = jnp.dtype(cfg.param_dtype)
  if shardings is None:
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
  else:
    params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x).astype(dtype), s), params, shardings)
  return DepthVLM(cfg), params


def save_pretrained(path: str, model: DepthVLM, params, *, dtype: Optional[str] = None,
                    max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes config.json + (sharded) safetensors that `transformers` and DepthVLM's code load.

  `dtype` ("float32", "bfloat16") defaults to the params' own dtype.
  """
  cfg = model.cfg
  leaves = jax.tree.leaves(params)
  np_dtype = np.dtype(jnp.dtype(dtype)) if dtype else np.asarray(leaves[0][..., :0]).dtype
  hf = hf_config.to_hf(cfg, torch_dtype=str(jnp.dtype(np_dtype)))
  host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)).astype(np_dtype), params)
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-save-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  try:
    safetensors_io.write_tensors(tmp, keymap.params_to_hf(host, cfg), max_shard_bytes)
    with open(os.path.join(tmp, CONFIG), "w") as f:
      json.dump(hf, f, indent=2)
    for name in os.listdir(tmp):  # mkdtemp and safetensors create owner-only files
      os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
    os.chmod(tmp, 0o777 & ~umask)
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix=".tmp-old-", dir=parent)
      os.replace(path, os.path.join(old, "d"))
      os.replace(tmp, path)
      shutil.rmtree(old)
    else:
      os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise

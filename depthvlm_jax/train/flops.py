"""Model FLOPs of a training step from the config, for MFU: the forward FLOPs of the vision
tower, the LLM and the depth head (XLA's count of each traced forward, no compile needed), and
the step as forward + 2x forward of the parts that train (a frozen part runs forward only)."""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from depthvlm_jax.convert.keymap import flatten
from depthvlm_jax.convert.pretrained import abstract_params
from depthvlm_jax.model.vlm import DepthVLM

# Parameter path prefixes of each part.
PARTS = {"vision": ("visual/",), "llm": ("embed_tokens/", "language_model/", "lm_head/"), "head": ("depth_head/",)}

# Dense bf16 peak FLOP/s per chip by jax device_kind (vendor figures), for MFU.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5": 459e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12, "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12, "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12,
}


@dataclasses.dataclass(frozen=True)
class StepFlops:
  forward: float  # the whole model forward (with the head when it runs)
  vision: float
  llm: float
  head: float
  train: float  # forward + 2 x the trainable parts' forward


def _cost(fn, *args) -> float:
  analysis = jax.jit(fn).lower(*args).cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis.get("flops", 0.0))


def step_flops(model: DepthVLM, batch_size: int, image_hw: Sequence[int], seq_len: int,
               trainable: Sequence[str], with_depth: bool = True) -> StepFlops:
  """FLOPs of one training step on a batch of this shape (per step, all devices together)."""
  params = nn.unbox(abstract_params(model.cfg))
  ids = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
  pixels = jax.ShapeDtypeStruct((batch_size, *image_hw, 3), jnp.float32)

  def whole(p, i, x, depth):
    out = model.apply({"params": p}, i, x, with_depth=depth)
    return out.logits, out.depth

  forward_text = _cost(lambda p, i, x: whole(p, i, x, False), params, ids, pixels)
  forward = _cost(lambda p, i, x: whole(p, i, x, with_depth), params, ids, pixels)
  vision = _cost(lambda p, x: model.apply({"params": p}, x, method=lambda m, y: m.visual(y)), params, pixels)
  parts = {"vision": vision, "llm": forward_text - vision, "head": forward - forward_text}
  paths = list(flatten(params))
  trains = {name: any(re.fullmatch(t, k) for t in trainable for k in paths if k.startswith(prefixes))
            for name, prefixes in PARTS.items()}
  train = forward + 2 * sum(f for name, f in parts.items() if trains[name])
  return StepFlops(forward=forward, train=train, **parts)


def peak_flops(devices=None) -> float | None:
  """The summed peak FLOP/s of the devices, or None when their kind is unknown (e.g. CPU)."""
  devices = jax.devices() if devices is None else devices
  peaks = [PEAK_FLOPS.get(d.device_kind) for d in devices]
  return None if any(p is None for p in peaks) else float(sum(peaks))

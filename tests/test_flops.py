"""The FLOP formula behind MFU (train/flops.py) against XLA's cost analysis of the traced model:
each part (vision, LLM, DPT heads at output strides 1 and 2, MLP head) and the whole forward
within 10%, on the tiny and mid presets and on 16-pixel tokens (the mid one's matmuls dominate as a real model's do).
Lowering only, no compile."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from depthvlm_jax import experiment
from depthvlm_jax.convert.pretrained import abstract_params
from depthvlm_jax.model.config import get_config
from depthvlm_jax.model.vlm import DepthVLM
from depthvlm_jax.train import flops

HW = (224, 320)
BATCH = 2
TEXT_TOKENS = 24


def xla_flops(fn, *args) -> float:
  return float(jax.jit(fn).lower(*args).cost_analysis()["flops"])


def xla_forward(cfg, ids, pixels, with_depth: bool) -> float:
  model = DepthVLM(cfg)

  def forward(params, ids, pixels):
    out = model.apply({"params": params}, ids, pixels, with_depth=with_depth)
    return out.logits, out.depth

  return xla_flops(forward, nn.unbox(abstract_params(cfg)), ids, pixels)


@pytest.mark.parametrize("preset,merge", [("tiny", 2), ("mid", 2), ("tiny", 1)])
def test_formula_matches_xla_cost_analysis(preset, merge, unrolled_scans):
  """merge 1: 16-pixel tokens, four times as many, and a head on a grid twice as fine."""
  cfg = get_config(preset)
  cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, spatial_merge_size=merge))
  t = cfg.vision.token_size
  seq_len = (HW[0] // t) * (HW[1] // t) + TEXT_TOKENS
  ids = jax.ShapeDtypeStruct((BATCH, seq_len), jnp.int32)
  pixels = jax.ShapeDtypeStruct((BATCH, *HW, 3), jnp.float32)
  vision = xla_flops(lambda p, x: DepthVLM(cfg).apply({"params": p}, x, method=lambda m, y: m.visual(y)),
                     nn.unbox(abstract_params(cfg)), pixels)
  text = xla_forward(cfg, ids, pixels, with_depth=False)
  # The formula counts matmuls and convolutions only. On 16-pixel tokens the tiny MLP head's
  # matmuls shrink to the size of its elementwise work (GELU, the activation on every pixel),
  # which XLA also counts: -15% there, so that head is checked on 32-pixel tokens only.
  heads = (dict(kind="dpt"), dict(kind="dpt", output_stride=2)) + ((dict(kind="mlp"),) if merge == 2 else ())
  for head in heads:
    c = cfg.replace(depth_head=dataclasses.replace(cfg.depth_head, **head))
    whole = xla_forward(c, ids, pixels, with_depth=True)
    xla = {"vision": vision, "llm": text - vision, "head": whole - text, "forward": whole}
    f = flops.step_flops(c, BATCH, HW, seq_len, ("depth_head/.*",))
    errors = {part: getattr(f, part) / ref - 1 for part, ref in xla.items()}
    print(preset, head, {part: f"{e:+.3f}" for part, e in errors.items()})
    assert all(abs(e) < 0.1 for e in errors.values()), errors

  assert f.train == f.forward + 2 * f.head
  stage2 = flops.step_flops(cfg, BATCH, HW, seq_len, experiment.LLM + ("depth_head/.*",))
  assert stage2.train == stage2.forward + 2 * (stage2.llm + stage2.head)

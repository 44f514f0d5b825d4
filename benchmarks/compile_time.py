"""Compile time against depth, as JSON: the layer stacks are `nn.scan`s, so compiling a deeper
model should cost about the same as a shallow one.

  python benchmarks/compile_time.py [--depths=2,8,32]

For each LLM depth (the vision tower scaled alongside, DeepStack layers fixed), the wall time of
lowering + compiling the jitted prefill and the stage-2 gradient of the "tiny" preset.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import depthvlm_jax as dvlm

flags.DEFINE_string("depths", "2,8,32", "LLM layer counts.")
flags.DEFINE_string("image", "64x96", "Image HxW.")
FLAGS = flags.FLAGS


def compile_seconds(fn, *args) -> float:
  start = time.perf_counter()
  jax.jit(fn).lower(*args).compile()
  return time.perf_counter() - start


def main(argv):
  del argv
  h, w = (int(v) for v in FLAGS.image.split("x"))
  rows = []
  for depth in (int(d) for d in FLAGS.depths.split(",")):
    base = dvlm.get_config("tiny")
    cfg = base.replace(text=dataclasses.replace(base.text, num_hidden_layers=depth),
                       vision=dataclasses.replace(base.vision, depth=max(depth, 4)))
    model = dvlm.DepthVLM(cfg)
    params = jax.eval_shape(lambda: dvlm.init_params(cfg))
    n = (h // cfg.vision.token_size) * (w // cfg.vision.token_size)
    ids = np.full((1, n + 8), 7, np.int32)
    ids[0, 4:4 + n] = cfg.image_token_id
    ids = jnp.asarray(ids)
    pixels = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
    forward = lambda p, x: model.apply({"params": p}, ids, x).depth
    grad = jax.grad(lambda p, x: jnp.mean(forward(p, x)))
    rows.append({"llm_layers": depth, "vision_blocks": cfg.vision.depth,
                 "prefill_compile_s": compile_seconds(forward, params, pixels),
                 "grad_compile_s": compile_seconds(grad, params, pixels)})
    print(json.dumps(rows[-1]), flush=True)
  first, last = rows[0], rows[-1]
  print(json.dumps({"rows": rows, "deepest_over_shallowest": {
      k: last[k] / first[k] for k in ("prefill_compile_s", "grad_compile_s")}}, indent=2))


if __name__ == "__main__":
  app.run(main)

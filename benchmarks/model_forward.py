"""Prefill latency and KV-cache decode throughput of a preset, as JSON.

  python benchmarks/model_forward.py --preset=tiny --image=224x320 --batch=2 --new_tokens=32

Reports float32 and bfloat16 compute in the same process (the ratio is the figure to compare
across machines) and the remat policy's cost on a forward+backward step.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import depthvlm_jax as dvlm

flags.DEFINE_string("preset", "tiny", "Model preset.")
flags.DEFINE_string("image", "224x320", "Image size HxW (multiples of 32).")
flags.DEFINE_integer("batch", 2, "Batch size.")
flags.DEFINE_integer("text", 32, "Text tokens around the image.")
flags.DEFINE_integer("new_tokens", 32, "Tokens to decode.")
flags.DEFINE_integer("repeats", 3, "Timed repeats (best is reported).")
FLAGS = flags.FLAGS


def best_time(fn, repeats):
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return min(times)


def inputs(cfg, h, w, b, text):
  n = (h // cfg.vision.token_size) * (w // cfg.vision.token_size)
  ids = np.full((b, text + n), 7, np.int32)
  ids[:, text // 2:text // 2 + n] = cfg.image_token_id
  pixels = np.random.default_rng(0).uniform(-1, 1, (b, h, w, 3)).astype(np.float32)
  return jnp.asarray(ids), jnp.asarray(pixels)


def main(argv):
  del argv
  h, w = (int(x) for x in FLAGS.image.split("x"))
  results = {"preset": FLAGS.preset, "image": [h, w], "batch": FLAGS.batch, "device": jax.devices()[0].device_kind}
  base = dvlm.get_config(FLAGS.preset)
  params = dvlm.init_params(base)
  ids, pixels = inputs(base, h, w, FLAGS.batch, FLAGS.text)
  for dtype in ("float32", "bfloat16"):
    model = dvlm.DepthVLM(base.replace(dtype=dtype))
    prefill = jax.jit(model.apply)
    t_prefill = best_time(lambda: prefill({"params": params}, ids, pixels).depth, FLAGS.repeats)
    t_gen = best_time(lambda: dvlm.generate(model, params, ids, pixels, max_new_tokens=FLAGS.new_tokens).tokens,
                      FLAGS.repeats)
    decode_s = max(t_gen - t_prefill, 1e-9)
    results[dtype] = {"prefill_s": t_prefill, "prefill_tokens_per_s": ids.size / t_prefill,
                      "decode_tokens_per_s": FLAGS.batch * (FLAGS.new_tokens - 1) / decode_s}
  results["bf16_over_f32_prefill_speedup"] = results["float32"]["prefill_s"] / results["bfloat16"]["prefill_s"]

  def step_time(policy):
    model = dvlm.DepthVLM(base.replace(remat_policy=policy))
    grad = jax.jit(jax.grad(lambda p: jnp.mean(model.apply({"params": p}, ids, pixels).depth)))
    return best_time(lambda: grad(params), FLAGS.repeats)

  t_none, t_full = step_time("none"), step_time("full")
  results["train_step_s"] = {"remat_none": t_none, "remat_full": t_full, "full_over_none": t_full / t_none}
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)

"""A full depth map from one prefill (DepthVLM) against the same map by point queries (DepthLM),
on the same model and image, as JSON.

  python benchmarks/dense_vs_points.py [--image=192x256] [--points=16] [--batch=8] [--repeats=3]

Both go through `Predictor`: the dense map is `predict` (one prefill: depth map + first token);
the per-point cost is `query_points` on a sample of pixels (each point its own marked image,
prefill + decoding of DepthLM's answer, batched), extrapolated to every pixel of the map. The
image is given at the canonical focal length, so the model sees it at its own size (the papers'
figure is for one 256x192 map). Models: the demo's and the tiny preset, random weights (the
cost does not depend on them: decoding always runs the answer's full length).
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import numpy as np
from absl import app, flags

from depthvlm_jax import experiment, tasks
from depthvlm_jax.convert import pretrained
from depthvlm_jax.infer.predictor import Predictor, Settings
from depthvlm_jax.model.config import get_config
from depthvlm_jax.model.vlm import DepthVLM
from demo_model import demo_config

FLAGS = flags.FLAGS
flags.DEFINE_string("image", "192x256", "Image size HxW (multiples of 32).")
flags.DEFINE_integer("points", 16, "Pixels queried by text (the per-point time is their mean).")
flags.DEFINE_integer("batch", 8, "Point queries per program.")
flags.DEFINE_integer("repeats", 3, "Timed calls (the best is kept).")


def best(fn, repeats: int) -> float:
  fn()  # compile
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def measure(cfg, h: int, w: int) -> dict:
  fx = 1000.0
  params = pretrained.init_params(cfg, 0)
  settings = Settings(canonical_fx=fx, bucket_multiple=32)
  dense = Predictor(DepthVLM(cfg), params, tasks.get("depthvlm"), settings)
  points = Predictor(DepthVLM(cfg), params, tasks.get("depthlm"), dataclasses.replace(settings, batch_size=FLAGS.batch))
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (h, w, 3), np.uint8)
  xy = np.stack([rng.integers(8, w - 8, FLAGS.points), rng.integers(8, h - 8, FLAGS.points)], axis=-1)
  t_dense = best(lambda: dense.predict(rgb, fx, max_new_tokens=1), FLAGS.repeats)
  t_points = best(lambda: points.query_points(rgb, fx, xy), FLAGS.repeats)
  per_point = t_points / FLAGS.points
  return {"dense_map_s": t_dense, "per_point_s": per_point, "answer_tokens": points.answer_tokens,
          "pixels": h * w, "points_map_s": per_point * h * w, "points_over_dense": per_point * h * w / t_dense}


def main(argv):
  del argv
  h, w = (int(x) for x in FLAGS.image.split("x"))
  results = {"image": [h, w], "points_sampled": FLAGS.points, "batch": FLAGS.batch,
             "device": jax.devices()[0].device_kind}
  for name, cfg in (("demo", experiment.model_config(demo_config())), ("tiny", get_config("tiny"))):
    results[name] = measure(cfg, h, w)
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)

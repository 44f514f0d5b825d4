"""Throughput of the procedural scenes on one core: rendering alone, and whole records (render,
PNG encoding, sparse points, validation). Prints one JSON line per kind.

  python benchmarks/synthetic_scenes.py [--num 200] [--width 256] [--height 192]
"""

from __future__ import annotations

import argparse
import json
import time

from depthvlm_jax.data import synthetic


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num", type=int, default=200)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--height", type=int, default=192)
  args = parser.parse_args()
  w, h = args.width, args.height
  for kind in synthetic.KINDS:
    config = synthetic.SceneConfig(kind=kind, width_range=(w, w), aspect_range=(h / w, h / w))
    synthetic.render_scene(0, kind, w, h, w)  # warm-up
    start = time.perf_counter()
    for seed in range(args.num):
      synthetic.render_scene(seed, kind, w, h, w)
    render_s = time.perf_counter() - start
    start = time.perf_counter()
    for seed in range(args.num):
      synthetic.make_record(seed, config)
    record_s = time.perf_counter() - start
    print(json.dumps({"kind": kind, "size": [w, h], "images_per_s": round(args.num / render_s, 1),
                      "records_per_s": round(args.num / record_s, 1)}))


if __name__ == "__main__":
  main()

"""Input-pipeline throughput (samples/s per worker), both modes, as JSON.

  python benchmarks/data_pipeline.py [--fixtures=../shared/fixtures] [--batches=20]

Cases: synthetic scenes at the demo resolution, and the seed fixtures (DepthVLM-Bench ScanNet++
1920x1440 JPEG + 256x192 depth; DepthLM iBims-1 640x480) focal-normalised to fx = 1000. Each
case runs with one reading thread in the main process (samples/s of one worker) and with 2
worker processes (how far it scales on this machine). Buffers are filled before timing, and
the timed window is much longer than the buffers.
"""

import json
import os
import tempfile
import time

from absl import app, flags

from depthvlm_jax import tasks
from depthvlm_jax.data import pipeline
from depthvlm_jax.data.ingest.run import ingest

flags.DEFINE_string("fixtures", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures"),
                    "Seed fixtures folder (skipped if absent).")
flags.DEFINE_integer("batches", 30, "Timed batches per case (after the warm-up).")
flags.DEFINE_integer("batch_size", 4, "Examples per batch.")
FLAGS = flags.FLAGS


def rate(cfg: pipeline.PipelineConfig) -> float:
  it = iter(pipeline.build(cfg))
  for _ in range(2 * max(1, cfg.worker_count) + cfg.prefetch_batches):
    next(it)  # warm-up: every worker started (imports, tokenizer load), buffers full
  start = time.perf_counter()
  for _ in range(FLAGS.batches):
    next(it)
  return FLAGS.batches * cfg.batch_size / (time.perf_counter() - start)


def fixture_sources(tmp: str) -> tuple[pipeline.Source, ...]:
  f = FLAGS.fixtures
  ingest("depthvlm_bench", f"{f}/depthvlm_bench/examples.jsonl", f"{tmp}/bench", root=f"{f}/depthvlm_bench/rgb",
         depth_root=f"{f}/depthvlm_bench/depth", dataset="scannetpp")
  ingest("depthlm", f"{f}/depthlm_ibims/ibims1_val.jsonl", f"{tmp}/ibims", depth_type="z", dataset="ibims")
  return (pipeline.Source(f"{tmp}/bench/*"), pipeline.Source(f"{tmp}/ibims/*"))


def main(argv):
  del argv
  cases = {"synthetic_demo_256x320": ((pipeline.Source(synthetic=10_000),), (256, 320))}
  tmp = tempfile.mkdtemp()
  if os.path.isdir(FLAGS.fixtures):
    cases["fixtures_fx1000_768x1024"] = (fixture_sources(tmp), (768, 1024))
  results = {}
  for name, (sources, hw) in cases.items():
    for mode in tasks.TASKS:
      row = {}
      for workers in (0, 2):
        cfg = pipeline.PipelineConfig(task=tasks.get(mode), sources=sources, image_hw=hw, batch_size=FLAGS.batch_size,
                                      worker_count=workers, read_threads=1)
        row[f"samples_per_s_{workers or 1}_worker{'s' if workers else ''}"] = rate(cfg)
      row["samples_per_s_per_worker"] = row["samples_per_s_1_worker"]
      row["two_worker_speedup"] = row["samples_per_s_2_workers"] / row["samples_per_s_1_worker"]
      results[f"{name}/{mode}"] = row
      print(json.dumps({f"{name}/{mode}": row}), flush=True)
  print(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
  app.run(main)

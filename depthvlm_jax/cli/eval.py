"""depthvlm-eval: the unified benchmark on any ingested record sets, per dataset and domain.

  depthvlm-eval --model=out/demo --data=out/demo_data/eval --out=out/demo_eval
  depthvlm-eval --model=/ckpt/DepthVLM-4B --config=configs/depthvlm.py:4b \
      --data='data/bench/nyuv2-*' --data='data/bench/kitti-*' --out=out/bench --protocols=sparse,dense

Writes OUT/results.json and OUT/results.md (one table per protocol, with the "always 2.0 m" and
training-median baselines) and prints the tables. Images are scored whole (size buckets, no
crop). A bad record is skipped and counted; the results are valid JSON even when a run fails.
"""

from __future__ import annotations

from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

from depthvlm_jax import loading, outputs, sharding
from depthvlm_jax.cli import runner
from depthvlm_jax.eval import benchmark
from depthvlm_jax.infer.predictor import Predictor

FLAGS = flags.FLAGS
CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config of a Hugging Face --model (a workdir "
                                         "brings its own).", lock_config=True)
flags.DEFINE_string("model", None, "Training workdir, one of its checkpoints, or a Hugging Face directory.",
                    required=True)
flags.DEFINE_multi_string("data", None, "ArrayRecord shards (glob, folder or path); repeat for more sets. Records "
                          "are grouped by their own dataset and domain.", required=True)
flags.DEFINE_string("out", None, "Output folder (new, empty, or an earlier evaluation's).", required=True)
flags.DEFINE_list("protocols", ["sparse", "dense"], "sparse (labelled points) and/or dense (every valid pixel).")
flags.DEFINE_list("questions", [], "DepthLM models: also ask these questions (principal_axis, two_points).")
flags.DEFINE_integer("questions_per_image", 5, "Questions of each extra kind per image.")
flags.DEFINE_integer("points_per_image", 0, "Sparse labels scored per image (the first ones; 0 = all).")
flags.DEFINE_integer("max_images", 0, "Records per --data set (0 = all).")
flags.DEFINE_integer("batch_size", 0, "Images per program (0 = one per device).")
flags.DEFINE_enum("empty", "zero", ["zero", "nan"], "An image without a valid label scores 0 and counts (the "
                  "release), or is left out.")
flags.DEFINE_enum("align", "none", ["none", "median"], "median: per-image median scaling (relative depth).")
flags.DEFINE_float("train_median", None, "The training-median baseline in metres (default: a workdir's own).")
flags.DEFINE_integer("pictures", 4, "Depth pictures of the first images.")
flags.DEFINE_bool("overwrite", False, "Write into an --out that holds other files (same names are replaced).")
flags.DEFINE_enum("on_bad_record", "skip", ["skip", "raise"], "A bad record is skipped and counted, or stops the run.")

KIND = "eval"


def main(argv):
  del argv
  out = Path(FLAGS.out)
  outputs.check_destination(out, KIND, FLAGS.overwrite)
  options = benchmark.Options(
      protocols=tuple(FLAGS.protocols), questions=tuple(FLAGS.questions), questions_per_image=FLAGS.questions_per_image,
      points_per_image=FLAGS.points_per_image, max_images=FLAGS.max_images, empty=FLAGS.empty,
      align=None if FLAGS.align == "none" else FLAGS.align,
      train_median=FLAGS.train_median if FLAGS.train_median is not None else loading.training_median(FLAGS.model),
      on_bad_record=FLAGS.on_bad_record, pictures=FLAGS.pictures).validate()
  devices = jax.device_count()
  batch = FLAGS.batch_size or devices
  if batch % devices:
    raise app.UsageError(f"--batch_size={batch} must be a multiple of the {devices} devices")
  mesh = sharding.make_mesh((1, -1, 1)) if devices > 1 else None
  predictor = Predictor.from_pretrained(FLAGS.model, CONFIG.value, mesh=mesh, batch_size=batch)
  out.mkdir(parents=True, exist_ok=True)
  outputs.write_marker(out, KIND)
  results = benchmark.run(predictor, FLAGS.data, options, out_dir=out)
  results = {"model": FLAGS.model, "data": FLAGS.data, **results}
  outputs.write_json(out / "results.json", results)
  table = benchmark.markdown(results)
  with outputs.atomic_file(out / "results.md", "w") as f:
    f.write(table)
  print(table)
  if not results["images"]:
    raise ValueError(f"nothing could be scored in {FLAGS.data}: {results['skipped']} record(s) skipped "
                     "(see the warnings above)")


def run():
  runner.run(main)


if __name__ == "__main__":
  run()

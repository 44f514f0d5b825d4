"""depthvlm-predict: metric depth (and the model's reply) for your images, or for ingested records.

  depthvlm-predict --model=out/demo --image=photos/ --fx=1450 --out=out/photos
  depthvlm-predict --model=/ckpt/DepthVLM-4B --image=IMG_0042.jpg --out=out/one    # fx from EXIF
  depthvlm-predict --model=out/demo --data=out/demo_data/eval --out=out/demo_pred  # records

--image writes, per image, STEM.npy (float32 metres at the image's size), STEM_depth.png (16-bit
millimetres), STEM_color.png (colour with a colour bar in metres), STEM.ply (point cloud, RGB) and
STEM.txt (the reply). --data writes OUT/<record key>.npy at each record's own image size. The
settings (canonical fx, buckets, task, tokenizer) are the run's own for a workdir; a Hugging Face
directory takes them from --config, else the release's (canonical fx 1000).
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from depthvlm_jax import outputs
from depthvlm_jax.cli import runner
from depthvlm_jax.infer import files
from depthvlm_jax.infer.predictor import Predictor

FLAGS = flags.FLAGS
CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config of a Hugging Face --model (a workdir "
                                         "brings its own).", lock_config=True)
flags.DEFINE_string("model", None, "Training workdir, one of its checkpoints, or a Hugging Face directory.",
                    required=True)
flags.DEFINE_string("image", None, "An image file or a folder of images.")
flags.DEFINE_string("data", None, "ArrayRecord shards (glob, folder or path) of ingested records.")
flags.DEFINE_string("out", None, "Output folder (new, empty, or an earlier prediction's).", required=True)
flags.DEFINE_float("fx", None, "--image: focal length in pixels at the image's size (default: from EXIF).")
flags.DEFINE_string("prompt", None, "--image: the question (default: the task's).")
flags.DEFINE_integer("batch_size", 1, "Images per prefill.")
flags.DEFINE_integer("max_images", 0, "--data: stop after this many records (0 = all).")
flags.DEFINE_integer("pictures", 8, "--data: depth pictures of the first records.")
flags.DEFINE_bool("overwrite", False, "Write into an --out that holds other files (same names are replaced).")
flags.DEFINE_enum("on_bad_input", "skip", ["skip", "raise"], "A bad image or record is skipped and counted, "
                  "or stops the run.")

KIND = "predict"  # the outputs marker of a prediction folder


def main(argv):
  del argv
  if bool(FLAGS.image) == bool(FLAGS.data):
    raise app.UsageError("give --image (files) or --data (ingested records), one of them")
  if FLAGS.batch_size <= 0:
    raise app.UsageError(f"--batch_size={FLAGS.batch_size}: must be positive")
  out = Path(FLAGS.out)
  outputs.check_destination(out, KIND, FLAGS.overwrite)
  paths = files.image_paths(FLAGS.image) if FLAGS.image else None
  predictor = Predictor.from_pretrained(FLAGS.model, CONFIG.value, batch_size=FLAGS.batch_size)
  out.mkdir(parents=True, exist_ok=True)
  outputs.write_marker(out, KIND)
  if paths is not None:
    summary = files.predict_images(predictor, paths, out, FLAGS.fx, FLAGS.prompt, FLAGS.on_bad_input)
  else:
    summary = files.predict_records(predictor, FLAGS.data, out, FLAGS.max_images, FLAGS.pictures, FLAGS.on_bad_input)
  outputs.write_json(out / "predictions.json", {"model": FLAGS.model, **summary})
  print(json.dumps(summary))


def run():
  runner.run(main)


if __name__ == "__main__":
  run()

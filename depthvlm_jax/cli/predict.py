"""depthvlm-predict: dense metric depth for every record, at each image's original size.

  depthvlm-predict --model=out/demo --data='data/bench/*' --out=out/pred
  depthvlm-predict --model=/ckpt/DepthVLM-4B --config=configs/depthvlm.py:4b --data=... --out=...

The settings (image size, canonical fx, task, tokenizer) are the run's own, read from the
workdir's experiment.json; an HF directory needs --config for them. Writes OUT/<record key>.npy
(float32 metres at the record's image size), depth pictures of the first images, and
metrics.json (dense and sparse delta1 / AbsRel / RMSE, images scored and skipped). A record that
cannot be used is skipped and counted; if none can be scored, the run fails (exit 2).
"""

from __future__ import annotations

import json
import time
from pathlib import Path, PurePosixPath

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

import depthvlm_jax as dvlm
from depthvlm_jax import experiment, loading, outputs
from depthvlm_jax.cli import runner
from depthvlm_jax.data import shards
from depthvlm_jax.data.records import RecordError
from depthvlm_jax.eval import metrics
from depthvlm_jax.infer import exports
from depthvlm_jax.infer.predictor import DepthPredictor, resize_depth
from depthvlm_jax.train import report

FLAGS = flags.FLAGS
CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config for a Hugging Face --model "
                                         "(a workdir brings its own).", lock_config=True)
flags.DEFINE_string("model", None, "Training workdir or Hugging Face DepthVLM directory.", required=True)
flags.DEFINE_string("data", None, "ArrayRecord shards (glob, folder or path) of ingested records.", required=True)
flags.DEFINE_string("out", None, "Output folder (new, empty, or an earlier prediction's).", required=True)
flags.DEFINE_integer("batch_size", 8, "Images (windows) per prefill.")
flags.DEFINE_integer("max_images", 0, "Stop after this many records (0 = all).")
flags.DEFINE_integer("pictures", 8, "Depth pictures of the first images.")
flags.DEFINE_bool("overwrite", False, "Write into an --out that holds other files (same names are replaced).")
flags.DEFINE_enum("on_bad_record", "skip", ["skip", "raise"], "A record that cannot be used is skipped and counted, "
                  "or stops the run.")

KIND = "predict"  # the outputs marker of a prediction folder


def _experiment() -> experiment.Experiment:
  config = loading.experiment_config(FLAGS.model)
  if config is None:
    config = CONFIG.value
  if config is None:
    raise app.UsageError(f"{FLAGS.model} is not a training workdir (no {experiment.CONFIG_FILE}): give "
                         "--config=configs/depthvlm.py:4b (or the config it was trained with) for its image size, "
                         "canonical focal length and task")
  exp = experiment.build(config)
  if not getattr(exp.task, "needs_depth_head", False):
    raise app.UsageError(f"task {exp.task.name!r} answers in text: depthvlm-predict writes depth maps from a depth "
                         "head (DepthLM point queries come with the evaluation runner)")
  return exp


def _output_path(out: Path, key: str) -> Path:
  """OUT/<key>.npy, with the key's folders, never outside OUT."""
  parts = [p for p in PurePosixPath(key).parts if p not in ("/", "..", ".")]
  return out.joinpath(*parts).with_suffix(".npy") if parts else out / "_.npy"


def main(argv):
  del argv
  if FLAGS.batch_size <= 0:
    raise app.UsageError(f"--batch_size={FLAGS.batch_size}: must be positive")
  exp = _experiment()
  out = Path(FLAGS.out)
  outputs.check_destination(out, KIND, FLAGS.overwrite)
  source = shards.ShardSource(FLAGS.data)
  model, params = dvlm.load_pretrained(FLAGS.model)
  c = exp.config
  predictor = DepthPredictor(model, params, tuple(c.data.image_hw), c.data.canonical_fx, exp.task.prompt,
                             FLAGS.batch_size, c.data.tokenizer, c.data.crop)
  out.mkdir(parents=True, exist_ok=True)
  outputs.write_marker(out, KIND)
  total = min(len(source), FLAGS.max_images) if FLAGS.max_images else len(source)
  progress = report.Progress(total, every=FLAGS.batch_size, batch_size=1)
  dense, sparse, skipped, start, pending = [], [], 0, time.time(), []

  def flush():
    preds = predictor.predict_many([(rgb, rec.intrinsics) for rec, rgb in pending])
    for (rec, rgb), pred in zip(pending, preds):
      path = _output_path(out, rec.key)
      path.parent.mkdir(parents=True, exist_ok=True)
      with outputs.atomic_file(path) as f:
        np.save(f, pred)
      at_depth = resize_depth(pred, rec.depth_size)
      if rec.depth is not None:
        dense.append(metrics.dense(at_depth[None], rec.depth[None], rec.valid_mask()[None]))
        if len(dense) <= FLAGS.pictures:
          same = rec.depth.shape == pred.shape
          exports.save_depth_figure(out / f"picture_{len(dense) - 1:03d}.png", rgb, pred,
                                    rec.depth if same else None, rec.valid_mask() if same else None, title=rec.key)
      if rec.points is not None:
        sparse.append(metrics.sparse(at_depth[None], rec.points[None], np.ones((1, len(rec.points)), bool)))
    pending.clear()

  for i in range(total):
    raw = source[i]
    try:
      rec = raw.decode()
      try:
        pending.append((rec, rec.decode_image()))
      except RecordError as e:
        raise RecordError(f"{raw.where} [{rec.key}]", e.field, e.problem) from e
    except RecordError as e:
      if FLAGS.on_bad_record == "raise":
        raise
      logging.warning("skipping a bad record: %s", e)
      skipped += 1
    if len(pending) == FLAGS.batch_size or (i == total - 1 and pending):
      flush()
      progress.update(i + 1)
  scored = total - skipped
  result = {"model": FLAGS.model, "data": FLAGS.data, "task": exp.task.name, "image_hw": list(c.data.image_hw),
            "canonical_fx": c.data.canonical_fx, "images_scored": scored, "images_skipped": skipped,
            "seconds": round(time.time() - start, 1)}
  cat = lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  if dense:
    result["dense"] = metrics.average(cat(dense))
  if sparse:
    result["sparse"] = metrics.average(cat(sparse))
  outputs.write_json(out / "metrics.json", result)
  print(json.dumps(result, indent=2))
  if skipped:
    logging.warning("skipped %d of %d records that could not be used (see the warnings above)", skipped, total)
  if not scored:
    raise RecordError(FLAGS.data, "records", f"nothing could be scored: {skipped} record(s) read, all skipped "
                      "(see the warnings above)" if skipped else "nothing could be scored: the data holds no record")


def run():
  runner.run(main)


if __name__ == "__main__":
  run()

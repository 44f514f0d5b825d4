"""depthvlm-predict: one prefill per batch -> depth maps + generated text, metrics and pictures.

  depthvlm-predict --model=out/tiny --data='out/synth/*.array_record' --out=out/pred
  depthvlm-predict --model=/ckpt/DepthLM --mode=depthlm --data='data/ibims/*' --tokenizer=/ckpt/DepthLM

Reads records through the evaluation pipeline (focal normalisation to fx = 1000, centre crop /
padding to --image_hw), prompts with the mode's question, and writes per-image PNGs (RGB,
ground truth, prediction) plus metrics.json: dense and sparse delta1 / AbsRel / RMSE for
DepthVLM, delta1 of the parsed text answers for DepthLM, and how many images were scored and
skipped. Records that cannot be used are skipped and counted; if none can be scored, the run
fails (exit 2).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

import depthvlm_jax as dvlm
from depthvlm_jax import outputs
from depthvlm_jax.cli import runner
from depthvlm_jax.data import pipeline, text, transforms
from depthvlm_jax.data.records import RecordError
from depthvlm_jax.eval import metrics
from depthvlm_jax.infer import exports

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Hugging Face checkpoint directory.", required=True)
flags.DEFINE_string("data", None, "ArrayRecord shards (glob); default: --synthetic scenes.")
flags.DEFINE_integer("synthetic", 16, "Without --data: number of synthetic scenes to render.")
flags.DEFINE_enum("mode", "depthvlm", list(pipeline.MODES), "Dense depth head, or DepthLM's text answers.")
flags.DEFINE_string("image_hw", "256x320", "Static input size HxW (multiples of 32).")
flags.DEFINE_float("canonical_fx", 1000.0, "Focal length every image is resized to (the model's training fx).")
flags.DEFINE_integer("batch_size", 4, "Images per prefill.")
flags.DEFINE_integer("max_batches", 4, "Stop after this many batches (0 = all).")
flags.DEFINE_integer("max_new_tokens", 24, "Text tokens to generate.")
flags.DEFINE_string("tokenizer", None, "Tokenizer dir / tokenizer.json (default: the shipped tiny one).")
flags.DEFINE_string("out", "out/predict", "Output folder for pictures and metrics.json (new, empty, or an earlier "
                    "prediction's).")
flags.DEFINE_bool("overwrite", False, "Write into an --out that holds other files (same names are replaced).")
flags.DEFINE_enum("on_bad_record", "skip", ["skip", "raise"], "A record that cannot be used is skipped and counted, "
                  "or stops the run.")

KIND = "predict"  # the outputs marker of a prediction folder


def _image_hw(value: str) -> tuple[int, int]:
  try:
    hw = tuple(int(x) for x in value.lower().split("x"))
  except ValueError:
    hw = ()
  if len(hw) != 2 or min(hw) <= 0 or any(s % 32 for s in hw):
    raise app.UsageError(f"--image_hw={value!r}: expected HxW with both sides positive multiples of 32, e.g. 256x320")
  return hw


def _check_flags() -> tuple[int, int]:
  if not (math.isfinite(FLAGS.canonical_fx) and FLAGS.canonical_fx > 0):
    raise app.UsageError(f"--canonical_fx={FLAGS.canonical_fx}: must be a positive focal length in pixels "
                         "(the fx the model was trained at, e.g. 1000)")
  for name in ("batch_size", "max_new_tokens"):
    if FLAGS[name].value <= 0:
      raise app.UsageError(f"--{name}={FLAGS[name].value}: must be positive")
  return _image_hw(FLAGS.image_hw)


def main(argv):
  del argv
  hw = _check_flags()
  out_dir = Path(FLAGS.out)
  outputs.check_destination(out_dir, KIND, FLAGS.overwrite)
  source = pipeline.Source(FLAGS.data) if FLAGS.data else pipeline.Source(synthetic=FLAGS.synthetic, synthetic_seed=10**6)
  cfg = pipeline.PipelineConfig(mode=FLAGS.mode, sources=(source,), image_hw=hw, batch_size=FLAGS.batch_size,
                                canonical_fx=FLAGS.canonical_fx, train=False, shuffle=False, num_epochs=1,
                                tokenizer_path=FLAGS.tokenizer, on_bad_record=FLAGS.on_bad_record)
  model, params = dvlm.load_pretrained(FLAGS.model)
  if FLAGS.mode == "depthvlm" and model.cfg.depth_head is None:
    raise app.UsageError(f"{FLAGS.model} has no depth head: use --mode=depthlm")
  tok = text.load_tokenizer(FLAGS.tokenizer)
  question = text.DEPTHVLM_PROMPT if FLAGS.mode == "depthvlm" else text.DEPTHLM_QUESTION
  prompt, _ = text.chat_tokens(tok, pipeline.num_image_tokens(hw), question)
  out_dir.mkdir(parents=True, exist_ok=True)
  outputs.write_marker(out_dir, KIND)

  dense, sparse, answers, weights, start = [], [], [], [], time.time()
  for step, batch in enumerate(pipeline.build(cfg)):
    if FLAGS.max_batches and step >= FLAGS.max_batches:
      break
    b = batch["image"].shape[0]
    ids = jnp.asarray(np.broadcast_to(prompt, (b, len(prompt))))
    pixels = jnp.asarray(transforms.normalize_pixels(batch["image"]))
    out = dvlm.generate(model, params, ids, pixels, max_new_tokens=FLAGS.max_new_tokens, eos_token_id=tok.eos_id,
                        pad_token_id=tok.pad_id)
    replies = [tok.decode(np.asarray(row), skip_special_tokens=True) for row in out.tokens]
    keep = np.asarray(batch["weight"]) > 0
    weights.append(keep)
    if FLAGS.mode == "depthvlm":
      depth = np.asarray(jax.device_get(out.depth))
      dense.append(metrics.dense(depth, batch["depth"], batch["depth_valid"]))
      sparse.append(metrics.sparse(depth, batch["points"], batch["points_valid"]))
      for i in np.flatnonzero(keep):
        exports.save_depth_panel(out_dir / f"{step * b + i:05d}.png", batch["image"][i], batch["depth"][i],
                                 batch["depth_valid"][i], depth[i])
    else:
      answers += [(text.parse_depth_answer(reply), float(batch["query"][i, 2]))
                  for i, reply in enumerate(replies) if keep[i]]
    print(f"batch {step}: {b} images, {(step + 1) * b / (time.time() - start):.2f} images/s, "
          f"reply[0]={replies[0]!r}", flush=True)

  keep = np.concatenate(weights) if weights else np.zeros(0, bool)
  scored, skipped = int(keep.sum()), int((~keep).sum())
  result = {"model": FLAGS.model, "mode": FLAGS.mode, "image_hw": hw, "canonical_fx": FLAGS.canonical_fx,
            "images_scored": scored, "images_skipped": skipped}
  if FLAGS.mode == "depthvlm" and scored:
    cat = lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    result["dense"], result["sparse"] = metrics.average(cat(dense), keep), metrics.average(cat(sparse), keep)
  elif scored:
    result["answers"] = metrics.text_answers([p for p, _ in answers], np.array([g for _, g in answers]))
  outputs.write_json(out_dir / "metrics.json", result)
  print(json.dumps(result, indent=2))
  if skipped:
    logging.warning("skipped %d of %d records that could not be used (see the warnings above)", skipped, len(keep))
  if not scored:
    raise RecordError(FLAGS.data or "synthetic scenes", "records",
                      f"nothing could be scored: {skipped} record(s) read, all skipped (see the warnings above)"
                      if skipped else "nothing could be scored: the data holds no record")


def run():
  runner.run(main)


if __name__ == "__main__":
  run()

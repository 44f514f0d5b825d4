"""depthvlm-predict: one prefill per batch -> depth maps + generated text, metrics and pictures.

  depthvlm-predict --model=out/tiny --data='out/synth/*.array_record' --out=out/pred
  depthvlm-predict --model=/ckpt/DepthLM --mode=depthlm --data='data/ibims/*' --tokenizer=/ckpt/DepthLM

Reads records through the evaluation pipeline (focal normalisation to fx = 1000, centre crop /
padding to --image_hw), prompts with the mode's question, and writes per-image PNGs (RGB,
ground truth, prediction) plus metrics.json: dense and sparse delta1 / AbsRel / RMSE for
DepthVLM, delta1 of the parsed text answers for DepthLM.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import depthvlm_jax as dvlm
from depthvlm_jax.data import pipeline, text, transforms
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
flags.DEFINE_string("out", "out/predict", "Output folder for pictures and metrics.json.")


def main(argv):
  del argv
  hw = tuple(int(x) for x in FLAGS.image_hw.split("x"))
  source = pipeline.Source(FLAGS.data) if FLAGS.data else pipeline.Source(synthetic=FLAGS.synthetic, synthetic_seed=10**6)
  cfg = pipeline.PipelineConfig(mode=FLAGS.mode, sources=(source,), image_hw=hw, batch_size=FLAGS.batch_size,
                                canonical_fx=FLAGS.canonical_fx, train=False, shuffle=False, num_epochs=1, tokenizer_path=FLAGS.tokenizer)
  model, params = dvlm.load_pretrained(FLAGS.model)
  if FLAGS.mode == "depthvlm" and model.cfg.depth_head is None:
    raise app.UsageError(f"{FLAGS.model} has no depth head: use --mode=depthlm")
  tok = text.load_tokenizer(FLAGS.tokenizer)
  question = text.DEPTHVLM_PROMPT if FLAGS.mode == "depthvlm" else text.DEPTHLM_QUESTION
  prompt, _ = text.chat_tokens(tok, pipeline.num_image_tokens(hw), question)
  os.makedirs(FLAGS.out, exist_ok=True)

  dense, sparse, answers, shown, start = [], [], [], 0, time.time()
  for step, batch in enumerate(pipeline.build(cfg)):
    if FLAGS.max_batches and step >= FLAGS.max_batches:
      break
    b = batch["image"].shape[0]
    ids = jnp.asarray(np.broadcast_to(prompt, (b, len(prompt))))
    pixels = jnp.asarray(transforms.normalize_pixels(batch["image"]))
    out = dvlm.generate(model, params, ids, pixels, max_new_tokens=FLAGS.max_new_tokens, eos_token_id=tok.eos_id,
                        pad_token_id=tok.pad_id)
    replies = [tok.decode(np.asarray(row), skip_special_tokens=True) for row in out.tokens]
    if FLAGS.mode == "depthvlm":
      depth = np.asarray(jax.device_get(out.depth))
      dense.append(metrics.dense(depth, batch["depth"], batch["depth_valid"]))
      sparse.append(metrics.sparse(depth, batch["points"], batch["points_valid"]))
      for i in range(b):
        exports.save_depth_panel(os.path.join(FLAGS.out, f"{shown:05d}.png"), batch["image"][i],
                                 batch["depth"][i], batch["depth_valid"][i], depth[i])
        shown += 1
    else:
      for i, reply in enumerate(replies):
        answers.append((text.parse_depth_answer(reply), float(batch["query"][i, 2])))
    print(f"batch {step}: {b} images, {(step + 1) * b / (time.time() - start):.2f} images/s, "
          f"reply[0]={replies[0]!r}", flush=True)

  result = {"model": FLAGS.model, "mode": FLAGS.mode, "image_hw": hw}
  if FLAGS.mode == "depthvlm":
    cat = lambda parts: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    result["dense"], result["sparse"] = metrics.average(cat(dense)), metrics.average(cat(sparse))
  else:
    result["answers"] = metrics.text_answers([p for p, _ in answers], np.array([g for _, g in answers]))
  with open(os.path.join(FLAGS.out, "metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


def run():
  app.run(main)


if __name__ == "__main__":
  run()

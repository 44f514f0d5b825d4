"""depthvlm-convert: move checkpoints between Hugging Face directories and this project.

  depthvlm-convert --src=/ckpt/DepthVLM-4B --dst=/ckpt/DepthVLM-4B-bf16 --dtype=bfloat16
  depthvlm-convert --preset=tiny --dst=out/tiny          # random weights, for demos and tests
  depthvlm-convert --src=/ckpt/X --dst=/ckpt/X --dtype=bfloat16 --overwrite   # in place
  depthvlm-convert --src=out/demo --dst=out/demo_hf    # a training run's latest checkpoint
  depthvlm-convert --src=out/demo --step=150 --dst=out/demo_hf_150   # or out/demo/checkpoints/150

Every conversion goes HF -> project params -> HF through the same key table, so a converted
directory is proof that the project reads the checkpoint completely. A --dst that holds
anything but an earlier export is refused unless --overwrite; even then only config.json and
the weights are replaced (an in-place conversion keeps the tokenizer and the rest).
"""

from __future__ import annotations

import math
import time

import jax
from absl import app, flags, logging

import depthvlm_jax as dvlm
from depthvlm_jax.cli import runner
from depthvlm_jax.convert import pretrained

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "Hugging Face Qwen3-VL / DepthVLM directory, training workdir (its latest "
                    "checkpoint), or one checkpoint of a workdir (WORKDIR/checkpoints/STEP) to read.")
flags.DEFINE_integer("step", None, "With a workdir --src: the checkpoint step to export (default: the latest).")
flags.DEFINE_string("preset", None, "Instead of --src: random-initialise this preset (tiny, mid, 2b, 4b, 8b).")
flags.DEFINE_string("dst", None, "Output directory: new, empty, or an earlier export.", required=True)
flags.DEFINE_bool("overwrite", False, "Write into a --dst that holds other files (its config.json and weights "
                  "are replaced, other files kept).")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Tensor dtype to write (default: as read).")
flags.DEFINE_bool("drop_depth_head", False, "Write a plain Qwen3-VL checkpoint (no depth_head.* tensors).")
flags.DEFINE_integer("seed", 0, "Seed for --preset.")
flags.DEFINE_integer("max_shard_mb", 5 * 1024, "Largest safetensors shard, in MiB.")


def main(argv):
  del argv
  if (FLAGS.src is None) == (FLAGS.preset is None):
    raise app.UsageError("give exactly one of --src (convert a checkpoint) or --preset (random init)")
  if FLAGS.step is not None and FLAGS.src is None:
    raise app.UsageError("--step selects a checkpoint of a training workdir given as --src")
  if FLAGS.max_shard_mb <= 0:
    raise app.UsageError(f"--max_shard_mb={FLAGS.max_shard_mb} must be positive")
  pretrained.check_destination(FLAGS.dst, FLAGS.overwrite)  # before minutes of reading
  start = time.time()
  overrides = {"depth_head": None} if FLAGS.drop_depth_head else {}
  if FLAGS.src:
    model, params = dvlm.load_pretrained(FLAGS.src, step=FLAGS.step, **overrides)
  else:
    cfg = dvlm.get_config(FLAGS.preset, **overrides)
    model, params = dvlm.DepthVLM(cfg), dvlm.init_params(cfg, seed=FLAGS.seed)
  count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  logging.info("read %s parameters (%s) in %.1f s", f"{count:,}", FLAGS.src or f"preset {FLAGS.preset}",
               time.time() - start)
  dvlm.save_pretrained(FLAGS.dst, model, params, dtype=FLAGS.dtype, max_shard_bytes=FLAGS.max_shard_mb * 2**20,
                       overwrite=FLAGS.overwrite)
  head = model.cfg.depth_head.kind if model.cfg.depth_head else "none"
  print(f"wrote {FLAGS.dst}: {count:,} parameters, depth head: {head}, {time.time() - start:.1f} s")


def run():
  runner.run(main)


if __name__ == "__main__":
  run()

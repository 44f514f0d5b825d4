"""depthvlm-train: run an experiment config in a workdir.

  depthvlm-train --config=configs/demo.py --workdir=out/demo
  depthvlm-train --config=configs/depthvlm.py:4b,stage1 --workdir=/gcs/runs/s1 --config.stages.stage1.lr=3e-4

Every setting comes from the config (`--config.KEY=VALUE` overrides; an unknown key fails at
start); the resolved config is written to WORKDIR/experiment.json for eval, predict and resume.
Run again, the same command resumes from the workdir's latest committed checkpoint; SIGTERM
saves at the current step and exits 0.

  depthvlm-train --config=configs/depthvlm.py:8b --compile_topology=v5p:4x4x4

compiles each stage's train step for that TPU slice on this machine (libtpu: the tpu_plan extra)
and prints its per-device memory plan as JSON instead of training.
"""

from __future__ import annotations

import json

import jax
from absl import flags
from ml_collections import config_flags

from depthvlm_jax import experiment
from depthvlm_jax.cli import runner
from depthvlm_jax.train import memory_plan, trainer

FLAGS = flags.FLAGS
CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/NAME.py[:ARG]).",
                                         lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: config, checkpoints, logs, pictures.")
flags.DEFINE_bool("overwrite", False, "Write into a --workdir that holds other files.")
flags.DEFINE_string("compile_topology", None, "A TPU topology (e.g. v5p:4x4x4, v6e:16x16): print each stage's "
                    "per-device memory plan, compiled for it here, and exit without training.")
flags.mark_flag_as_required("config")
flags.register_multi_flags_validator(["workdir", "compile_topology"],
                                     lambda f: bool(f["workdir"] or f["compile_topology"]),
                                     "--workdir is required (except with --compile_topology)")


def main(argv):
  del argv
  if FLAGS.compile_topology:
    plans = memory_plan.stage_plans(CONFIG.value, FLAGS.compile_topology)
    print(json.dumps([p.to_json() for p in plans], indent=2))
    return
  experiment.init_distributed(CONFIG.value)
  exp = experiment.build(CONFIG.value, num_devices=jax.device_count())
  result = trainer.run(exp, FLAGS.workdir, overwrite=FLAGS.overwrite)
  print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}, indent=2))


def run():
  runner.run(main)


if __name__ == "__main__":
  run()

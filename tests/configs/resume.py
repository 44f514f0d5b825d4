"""The demo's model in a two-stage experiment of 10 short steps, for the checkpoint, resume and
multi-host tests (seconds per step on CPU).

  --config=tests/configs/resume.py:DATA_DIR   (DATA_DIR holds train/ shards)
"""

import importlib.util
import os

from depthvlm_jax import experiment

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "demo.py")


def get_config(data_dir):
  spec = importlib.util.spec_from_file_location("demo_config", DEMO)
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  c = experiment.base_config()
  c.task = "depthvlm"
  c.model = demo.get_config().model
  c.data.image_hw = (64, 64)
  c.data.canonical_fx = 60.0
  c.data.crop = "principal"
  c.data.worker_count = 2
  c.data.train = {"synthetic": experiment.source(f"{data_dir}/train")}
  c.stages = {
      "stage1": experiment.stage_section(steps=4, batch_size=8, lr=1e-3, trainable=("depth_head/.*",),
                                         loss_weights={"depth": 1.0}, detach_head_inputs=True),
      "stage2": experiment.stage_section(steps=6, batch_size=8, lr=1e-3, warmup_frac=0.25, trainable=(".*",),
                                         loss_weights={"depth": 1.0, "ce": 1.0}),
  }
  c.checkpoint.every_steps = 4
  c.log.every_steps = 1
  c.log.batch_crc32 = True
  return c

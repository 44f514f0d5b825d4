"""A tiny two-stage experiment for the checkpoint and resume tests (seconds per step on CPU).

  --config=tests/configs/resume.py:DATA_DIR   (DATA_DIR holds train/ shards)
"""

from depthvlm_jax import experiment


def get_config(data_dir):
  c = experiment.base_config()
  c.task = "depthvlm"
  c.model = experiment.model_section("tiny")
  c.data.image_hw = (64, 64)
  c.data.canonical_fx = 60.0
  c.data.crop = "principal"
  c.data.worker_count = 2
  c.data.train = {"synthetic": experiment.source(f"{data_dir}/train")}
  c.stages = {
      "stage1": experiment.stage_section(steps=4, batch_size=4, lr=1e-3, trainable=("depth_head/.*",),
                                         loss_weights={"depth": 1.0}, detach_head_inputs=True),
      "stage2": experiment.stage_section(steps=8, batch_size=4, lr=1e-3, warmup_frac=0.25, trainable=(".*",),
                                         loss_weights={"depth": 1.0, "ce": 1.0}),
  }
  c.checkpoint.every_steps = 3
  c.log.every_steps = 1
  c.log.batch_crc32 = True
  return c

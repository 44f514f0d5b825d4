"""The CPU demo: a small DepthVLM trained from scratch on synthetic scenes (README's main command).

  depthvlm-train --config=configs/demo.py --workdir=out/demo

Synthetic rooms and streets are rendered into data.render.dir on first use (train and held-out
scenes from disjoint seeds). Stage 1 warms up the DPT head on the frozen, random backbone as the
recipe's stage 1 does; stage 2 then trains everything with SILog + the reply's cross-entropy.
Unlike the recipe's stage 2, the vision tower trains too: from scratch there is no pretrained
tower to keep, and depth has to be learnt from pixels.
"""

from depthvlm_jax import experiment


def get_config(arg=None):
  del arg
  c = experiment.base_config()
  c.task = "depthvlm"
  c.model = experiment.model_section(
      "tiny",
      vision=dict(depth=4, hidden_size=96, intermediate_size=192, num_heads=4, out_hidden_size=96,
                  num_position_embeddings=256, deepstack_visual_indexes=(0, 1, 2)),
      text=dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=24, mrope_section=(4, 4, 4)),
      depth_head=dict(features=32, out_channels=(16, 32, 64, 64)))
  c.data.image_hw = (192, 256)
  c.data.canonical_fx = 200.0
  c.data.render.update(dir="out/demo_data", train=2000, eval=64)
  c.data.train = {"synthetic": experiment.source("out/demo_data/train")}
  c.eval.sources = {"synthetic": experiment.source("out/demo_data/eval")}
  c.eval.update(every_steps=400, batch_size=8, num_batches=8, pictures=4)
  everything = (".*",)
  c.stages = {
      "stage1": experiment.stage_section(steps=100, batch_size=8, lr=1e-3, warmup_frac=0.1,
                                         trainable=("depth_head/.*",), loss_weights={"depth": 1.0},
                                         detach_head_inputs=True),
      "stage2": experiment.stage_section(steps=1200, batch_size=8, lr=1e-3, warmup_frac=0.05,
                                         trainable=everything, loss_weights={"depth": 1.0, "ce": 1.0}),
  }
  c.checkpoint.every_steps = 500
  c.log.every_steps = 25
  return c

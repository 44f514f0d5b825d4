"""The CPU demo: a small DepthVLM trained from scratch on synthetic scenes (README's main command).

  depthvlm-train --config=configs/demo.py --workdir=out/demo

Synthetic rooms and streets are rendered into data.render.dir on first use (train and held-out
scenes from disjoint seeds). Stage 1 warms up the DPT head on the frozen, random backbone as the
recipe's stage 1 does; stage 2 then trains everything with SILog + the reply's cross-entropy.
Unlike the recipe's stage 2, the vision tower trains too: from scratch there is no pretrained
tower to keep, and depth has to be learnt from pixels. The head outputs log-depth
(depth_head.activation="exp"): a softplus head trained from scratch creeps towards street
distances for thousands of steps.
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
      # The finest level paints each token's 8x8 sub-grid from its projection: 96 channels there
      # (was 16) carry sub-token detail, which these scenes need (a perfect per-token mean scores
      # delta1 0.50). The last convolutions run at half size: the step takes 0.19 s, not 0.35 s.
      depth_head=dict(features=16, out_channels=(96, 48, 32, 32), activation="exp", output_stride=2))
  c.task_options = {"flip": True, "photometric": 0.3}
  # Small canonical images (the synthetic 224-320 px wide, 40-80 deg views become 51-118 px wide),
  # each whole inside a 96x128 window centred on its principal point: a pixel's place in the
  # window is then its ray's angle in every image. (At fx 110 in a 160x192 window, 69% of it was
  # padding and the run made 300 steps in the time it now makes 700.)
  c.data.image_hw = (96, 128)
  c.data.canonical_fx = 70.0
  c.data.crop = "principal"
  c.data.render.update(dir="out/demo_data", train=1500, eval=64)
  c.data.train = {"synthetic": experiment.source("out/demo_data/train")}
  c.eval.sources = {"synthetic": experiment.source("out/demo_data/eval")}
  c.eval.update(every_steps=350, batch_size=16, num_batches=4, pictures=4, buckets=((96, 128),))
  everything = (".*",)
  c.stages = {
      "stage1": experiment.stage_section(steps=50, batch_size=16, lr=3e-3, warmup_frac=0.1,
                                         trainable=("depth_head/.*",), loss_weights={"depth": 1.0},
                                         detach_head_inputs=True),
      "stage2": experiment.stage_section(steps=1400, batch_size=16, lr=2e-3, warmup_frac=0.05,
                                         trainable=everything, loss_weights={"depth": 1.0, "ce": 1.0}),
  }
  c.checkpoint.every_steps = 700
  c.log.every_steps = 25
  return c

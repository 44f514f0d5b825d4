"""DepthVLM's recipe (REFERENCE.md 1) on Qwen3-VL: arg = "2b|4b|8b[,stage1|stage2]".

  depthvlm-train --config=configs/depthvlm.py:4b,stage1 --workdir=$RUN/stage1 \
      --config.data.train.mix.paths='/gcs/depthvlm/train/*'
  depthvlm-train --config=configs/depthvlm.py:4b,stage2 --workdir=$RUN/stage2 \
      --config.model.init_from=$RUN/stage1 --config.data.train.mix.paths=...

Stage 1 trains the DPT head alone (ViT, LLM and lm_head frozen; no backward pass through them):
lr 3.5e-4, cosine, 4% warmup, global batch 2560, one epoch, SILog only. Stage 2 trains the LLM,
lm_head and head (the vision tower and its mergers frozen) with SILog + the reply's CE: lr 2e-5,
5% warmup, global batch 640, one epoch. Without a stage the arg runs both in one workdir.
Weights start from a Qwen3-VL checkpoint (model.init_from: an HF directory).
"""

from depthvlm_jax import experiment

NUM_TRAIN_IMAGES = 4_400_000  # the release's training set; one epoch per stage
BATCH = {"stage1": 2560, "stage2": 640}


def get_config(arg="4b"):
  size, *stage = (arg or "4b").split(",")
  c = experiment.base_config()
  c.task = "depthvlm"
  c.model = experiment.model_section(size, dtype="bfloat16", remat_policy="full")
  c.model.init_from = f"checkpoints/Qwen3-VL-{size.upper()}-Instruct"  # a local HF directory (no hub access)
  c.data.image_hw = (768, 1024)
  c.data.canonical_fx = 1000.0
  c.data.worker_count = 8
  c.data.train = {"mix": experiment.source("data/depthvlm_train/*")}
  c.eval.sources = {"bench": experiment.source("data/depthvlm_bench/*")}
  c.eval.update(every_steps=500, batch_size=64, num_batches=16)
  stages = {
      "stage1": experiment.stage_section(
          steps=NUM_TRAIN_IMAGES // BATCH["stage1"], batch_size=BATCH["stage1"], lr=3.5e-4, warmup_frac=0.04,
          trainable=("depth_head/.*",), loss_weights={"depth": 1.0}, detach_head_inputs=True),
      "stage2": experiment.stage_section(
          steps=NUM_TRAIN_IMAGES // BATCH["stage2"], batch_size=BATCH["stage2"], lr=2e-5, warmup_frac=0.05,
          trainable=experiment.LLM + ("depth_head/.*",), loss_weights={"depth": 1.0, "ce": 1.0}),
  }
  c.stages = {name: stages[name] for name in (stage or ["stage1", "stage2"])}
  c.mesh.update(shape=(1, -1, 1), rules="fsdp")
  c.checkpoint.update(every_steps=500, keep=3)
  return c

"""DepthLM: text-only fine-tuning of the unmodified VLM on marked-pixel depth questions.

  depthvlm-train --config=configs/depthlm.py:4b --workdir=... --config.model.init_from=/ckpt/Qwen3-VL-4B
  depthvlm-train --config=configs/depthlm.py:demo --workdir=out/depthlm_demo      # CPU, synthetic

One labelled pixel per image view, DepthLM's centre crop after focal normalisation (fx 1000,
crops 1000-1400 x 700-1200), cross-entropy on the answer only. The demo variant learns from
scratch on synthetic scenes at a small canonical focal length; its crops scale with it.
"""

from depthvlm_jax import experiment


def get_config(arg="4b"):
  c = experiment.base_config()
  c.task = "depthlm"
  if arg == "demo":
    c.model = experiment.model_section(
        "tiny", depth_head=None,
        vision=dict(depth=4, hidden_size=96, intermediate_size=192, num_heads=4, out_hidden_size=96,
                    num_position_embeddings=256, deepstack_visual_indexes=(0, 1, 2)),
        text=dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=24, mrope_section=(4, 4, 4)))
    c.task_options = {"crop_width": (150, 220), "crop_height": (110, 170)}  # DepthLM's crop, at fx 110
    c.data.image_hw = (160, 192)
    c.data.canonical_fx = 110.0
    c.data.crop = "principal"
    c.data.render.update(dir="out/demo_data_depthlm", train=1500, eval=64)
    c.data.train = {"synthetic": experiment.source("out/demo_data_depthlm/train")}
    c.eval.sources = {"synthetic": experiment.source("out/demo_data_depthlm/eval")}
    c.eval.update(every_steps=200, batch_size=16, num_batches=4, pictures=0, buckets=((160, 192),))
    c.stages = {"sft": experiment.stage_section(steps=600, batch_size=16, lr=1e-3, warmup_frac=0.05,
                                                trainable=(".*",), loss_weights={"ce": 1.0})}
    c.log.every_steps = 25
    return c
  c.model = experiment.model_section(arg, depth_head=None, dtype="bfloat16", remat_policy="full")
  c.model.init_from = f"checkpoints/Qwen3-VL-{arg.upper()}-Instruct"  # a local HF directory (no hub access)
  c.task_options = {"crop_width": (1000, 1400), "crop_height": (700, 1200)}
  c.data.image_hw = (768, 1024)
  c.data.canonical_fx = 1000.0
  c.data.worker_count = 8
  c.data.train = {"mix": experiment.source("data/depthlm_train/*")}
  c.eval.sources = {"bench": experiment.source("data/depthvlm_bench/*")}
  c.eval.update(every_steps=1000, batch_size=64, num_batches=8, pictures=0)
  c.stages = {"sft": experiment.stage_section(steps=20_000, batch_size=256, lr=1e-5, warmup_frac=0.03,
                                              trainable=(".*",), loss_weights={"ce": 1.0})}
  c.checkpoint.update(every_steps=1000, keep=3)
  return c

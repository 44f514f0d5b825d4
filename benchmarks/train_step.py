"""Train-step cost against the forward, measured in one process, as JSON.

  python benchmarks/train_step.py [--batch=8] [--repeats=5]

For the demo model and a backbone-heavy one (a deeper, wider vision tower and LLM with a small
head), times the jitted forward (with the depth map), the stage-1 step (head only, the backbone
detached) and the stage-2 step (LLM + head). stage1_over_forward near 1 + 2 x (head share of
the forward) shows that stage 1 runs no backward pass through the frozen backbone. For the
demo, also the images/s its own data pipeline delivers against what its stage-2 step consumes.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time

import jax
from absl import app, flags

from depthvlm_jax import experiment, sharding, tasks
from depthvlm_jax.convert import pretrained
from depthvlm_jax.data import pipeline
from depthvlm_jax.model.vlm import DepthVLM
from depthvlm_jax.train import flops, step as step_lib, trainer
from demo_model import demo_config

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 8, "Images per step.")
flags.DEFINE_integer("repeats", 5, "Timed calls (the best is kept).")



def backbone_heavy_config():
  c = demo_config()
  c.model = experiment.model_section(
      "tiny",
      vision=dict(depth=8, hidden_size=256, intermediate_size=1024, num_heads=4, out_hidden_size=256,
                  num_position_embeddings=256, deepstack_visual_indexes=(1, 3, 5)),
      text=dict(hidden_size=256, intermediate_size=768, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=2, head_dim=32, mrope_section=(6, 5, 5)),
      depth_head=dict(features=16, out_channels=(8, 16, 32, 32)))
  return c


def best_time(fn, repeats: int) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def measure(c, batch_size: int, repeats: int) -> dict:
  exp = experiment.build(c)
  model = DepthVLM(exp.model)
  params = pretrained.init_params(exp.model)
  hw = tuple(c.data.image_hw)
  data = pipeline.PipelineConfig(task=tasks.get("depthvlm"), sources=(pipeline.Source(synthetic=batch_size),),
                                 image_hw=hw, batch_size=batch_size, canonical_fx=c.data.canonical_fx, shuffle=False)
  host = next(iter(pipeline.build(data)))
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  batch = pipeline.to_global(host, mesh)
  forward = jax.jit(lambda p, b: model.apply({"params": p}, b["input_ids"], step_lib.pixels_on_device(b["image"]),
                                             b["attention_mask"]).depth)
  row = {"image_hw": list(hw), "batch": batch_size, "forward_s": best_time(lambda: forward(params, batch), repeats)}
  stages = {
      "stage1": experiment.stage_section(steps=100, batch_size=batch_size, lr=1e-4, trainable=("depth_head/.*",),
                                         loss_weights={"depth": 1.0}, detach_head_inputs=True),
      "stage2": experiment.stage_section(steps=100, batch_size=batch_size, lr=1e-4,
                                         trainable=experiment.LLM + ("depth_head/.*",),
                                         loss_weights={"depth": 1.0, "ce": 1.0}),
  }
  for name, section in stages.items():
    stage = experiment.stage_of(name, section)
    shardings = step_lib.state_shardings(model, mesh, "fsdp", stage.step)
    state = jax.jit(lambda p: step_lib.init_state(p, stage.step), out_shardings=shardings)(params)
    fn = jax.jit(step_lib.make_step(model, exp.task, stage.step))  # no donation: the same state is reused
    with sharding.use_mesh(mesh, "fsdp"):
      row[f"{name}_s"] = best_time(lambda: fn(state, batch)[1]["loss"], repeats)
    row[f"{name}_over_forward"] = row[f"{name}_s"] / row["forward_s"]
    f = flops.step_flops(exp.model, batch_size, hw, host["input_ids"].shape[1], stage.step.optimizer.trainable)
    row[f"{name}_model_flops_over_forward"] = f.train / f.forward
  row["head_share_of_forward_flops"] = f.head / f.forward
  return row


def data_rate(c, batches: int = 20) -> float:
  """Images/s of the experiment's own training pipeline (its workers, reading threads and
  augmentation) over freshly rendered demo scenes."""
  with tempfile.TemporaryDirectory() as tmp:
    c = copy.deepcopy(c)
    c.data.render.update(dir=tmp, train=64, eval=0)
    trainer.render_demo_data(c)
    exp = experiment.build(c)
    cfg = experiment.pipeline_config(exp, experiment.sources(
        {"train": experiment.source(f"{tmp}/train")}, "data.train"), FLAGS.batch, train=True)
    it = iter(pipeline.build(cfg))
    for _ in range(2 + cfg.prefetch_batches):
      next(it)
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    return batches * FLAGS.batch / (time.perf_counter() - start)


def main(argv):
  del argv
  demo = measure(demo_config(), FLAGS.batch, FLAGS.repeats)
  demo["data_images_per_s"] = data_rate(demo_config())
  demo["stage2_images_per_s"] = FLAGS.batch / demo["stage2_s"]
  demo["data_over_stage2_consumption"] = demo["data_images_per_s"] / demo["stage2_images_per_s"]
  results = {"device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(), "demo": demo,
             "backbone_heavy": measure(backbone_heavy_config(), FLAGS.batch, FLAGS.repeats)}
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)

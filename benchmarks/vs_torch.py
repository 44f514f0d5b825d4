"""The project against PyTorch on equal weights and inputs, in one process, as JSON.

  python benchmarks/vs_torch.py [--image=320x448] [--repeats=5] [--threads=2]

Reference: transformers' Qwen3-VL (SDPA attention) + the release-structure torch DPT head
(tests/torch_dpt.py), on the "mid" preset (vision depth 8 / width 256, text 8 layers / width
512, GQA 8/2, vocab 8192, the release's DPT widths), float32, batch 1.

- prefill: one forward giving the logits of every position and the full-resolution depth map
  (the torch side reads the DeepStack features and the final-normed LLM states with hooks, as
  the release does); `speedup` = torch time / ours; the depth maps are compared too.
- train step (stage 2: LLM + head train, vision frozen; CE + SILog; AdamW, clip 1): our jitted
  step vs torch forward + backward + optimizer step.
- head scaling: the DPT head alone at 256x320, 512x640 and 1024x1280; `exponent` is the slope of
  log time against log pixels between the last two sizes (1 = linear).
Calls alternate between the two frameworks so that both see the same machine load; the best
of `repeats` is kept.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import depthvlm_jax as dvlm
from depthvlm_jax import experiment, sharding, tasks
from depthvlm_jax.convert import hf_config, keymap
from depthvlm_jax.data import pipeline
from depthvlm_jax.data.text import IGNORE_ID
from depthvlm_jax.model import depth_head
from depthvlm_jax.model.vision import patchify
from depthvlm_jax.train import step as step_lib
from depthvlm_jax.train.losses import SILOG_EPS, SILOG_VARIANCE_FOCUS

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import torch  # noqa: E402
import transformers  # noqa: E402
from torch_dpt import TorchDPT  # noqa: E402

flags.DEFINE_string("image", "320x448", "Prefill / train image HxW (multiples of 32).")
flags.DEFINE_integer("repeats", 5, "Timed calls per framework (the best is kept).")
flags.DEFINE_integer("threads", 2, "torch intra-op threads (XLA uses the machine's cores).")
flags.DEFINE_string("head_sizes", "256x320,512x640,1024x1280", "Images for the head-scaling rows.")
FLAGS = flags.FLAGS


def hw_of(text: str) -> tuple[int, int]:
  h, w = (int(v) for v in text.split("x"))
  return h, w


def best_of(fns: dict, repeats: int) -> dict:
  """{name: best seconds}, the calls of all names interleaved (first call: warm-up/compile)."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: min(t) for name, t in times.items()}


def torch_models(cfg):
  """The HF model (SDPA) and the release-structure head, random, with state dicts for our params."""
  torch.manual_seed(0)
  hf_cfg = transformers.Qwen3VLConfig(**hf_config.to_hf(cfg.replace(depth_head=None)))
  hf = transformers.Qwen3VLForConditionalGeneration._from_config(hf_cfg, attn_implementation="sdpa").eval()
  head = TorchDPT(cfg.text.hidden_size, cfg.depth_head).eval()
  tensors = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  tensors.update({f"depth_head.{k}": v.detach().numpy() for k, v in head.state_dict().items()})
  params = jax.tree.map(jnp.asarray, keymap.hf_to_params(tensors, cfg))
  return hf, head, params


class TorchDepthVLM(torch.nn.Module):
  """Qwen3-VL + DPT head as the release runs it: one forward; hooks keep the DeepStack merger
  outputs and the final-normed LLM states, which the head reads at the image tokens."""

  def __init__(self, hf, head, cfg):
    super().__init__()
    self.hf, self.head, self.cfg = hf, head, cfg
    self.seen = {}
    hf.model.visual.register_forward_hook(lambda m, i, o: self.seen.__setitem__("deepstack", o.deepstack_features))
    hf.model.language_model.norm.register_forward_hook(lambda m, i, o: self.seen.__setitem__("last", o))

  def forward(self, inputs, grid):
    logits = self.hf(**inputs).logits
    image = inputs["input_ids"][0] == self.cfg.image_token_id
    feats = [f[None] for f in self.seen["deepstack"]] + [self.seen["last"][0][image][None]]
    return logits, self.head(feats, grid)


def torch_inputs(cfg, ids, mask, pixels):
  b, h, w, _ = pixels.shape
  v = cfg.vision
  flat = np.asarray(patchify(pixels, v.patch_size, v.temporal_patch_size, v.spatial_merge_size))
  return dict(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
              pixel_values=torch.tensor(flat.reshape(b * flat.shape[1], -1)),
              image_grid_thw=torch.tensor([[1, h // v.patch_size, w // v.patch_size]] * b),
              mm_token_type_ids=torch.tensor((ids == cfg.image_token_id).astype(np.int64)))


def demo_batch(cfg_exp, hw):
  data = pipeline.PipelineConfig(task=tasks.get("depthvlm"), sources=(pipeline.Source(synthetic=1),),
                                 image_hw=hw, batch_size=1, canonical_fx=cfg_exp.data.canonical_fx, shuffle=False)
  return next(iter(pipeline.build(data)))


def experiment_config(hw):
  c = experiment.base_config()
  c.task = "depthvlm"
  c.model = experiment.model_section("mid")
  c.data.image_hw = hw
  c.stages = {"stage2": experiment.stage_section(
      steps=100, batch_size=1, lr=1e-4, trainable=experiment.LLM + ("depth_head/.*",),
      loss_weights={"depth": 1.0, "ce": 1.0})}
  return c


def torch_silog(pred, gt, valid):
  d = torch.log(pred.clamp_min(1e-6)) - torch.log(gt.clamp_min(1e-6))
  d = d[valid]
  return torch.sqrt((d * d).mean() - SILOG_VARIANCE_FOCUS * d.mean() ** 2 + SILOG_EPS)


def prefill_and_step(hw, repeats) -> dict:
  c = experiment_config(hw)
  exp = experiment.build(c)
  cfg = exp.model
  hf, head, params = torch_models(cfg)
  tmodel = TorchDepthVLM(hf, head, cfg)
  host = demo_batch(c, hw)
  ids, mask = host["input_ids"], host["attention_mask"]
  pixels = np.asarray(step_lib.pixels_on_device(jnp.asarray(host["image"])))
  grid = (hw[0] // cfg.vision.token_size, hw[1] // cfg.vision.token_size)
  tin = torch_inputs(cfg, ids, mask, pixels)
  model = dvlm.DepthVLM(cfg)
  prefill = jax.jit(lambda p, i, x, m: (lambda o: (o.logits, o.depth))(model.apply({"params": p}, i, x, m)))
  args = (params, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask))

  def ours():
    return jax.block_until_ready(prefill(*args))

  def theirs():
    with torch.inference_mode():
      return tmodel(tin, grid)

  times = best_of({"ours": ours, "torch": theirs}, repeats)
  (logits, depth), (t_logits, t_depth) = ours(), theirs()
  row = {"image_hw": list(hw), "tokens": int(ids.shape[1]), "ours_s": times["ours"], "torch_s": times["torch"],
         "speedup": times["torch"] / times["ours"],
         "depth_max_rel_diff": float(np.abs(np.asarray(depth)[0] - t_depth[0].numpy()).max() / np.abs(t_depth).max().item()),
         "logits_max_abs_diff": float(np.abs(np.asarray(logits) - t_logits.numpy()).max())}

  # Stage-2 train step.
  stage = experiment.stage_of("stage2", c.stages.stage2)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  batch = pipeline.to_global(host, mesh)
  state = jax.jit(lambda p: step_lib.init_state(p, stage.step))(params)
  fn = jax.jit(step_lib.make_step(model, exp.task, stage.step))
  for p in hf.model.visual.parameters():
    p.requires_grad_(False)
  trainable = [p for p in tmodel.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
  labels = torch.tensor(host["labels"], dtype=torch.long)
  gt = torch.tensor(host["depth"])
  valid = torch.tensor(host["depth_valid"])

  def our_step():
    with sharding.use_mesh(mesh, "fsdp"):
      return jax.block_until_ready(fn(state, batch)[1]["loss"])

  def torch_step():
    opt.zero_grad(set_to_none=True)
    logits, depth = tmodel(tin, grid)
    keep = labels != IGNORE_ID
    ce = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    loss = ce + torch_silog(depth, gt, valid)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    return loss

  times = best_of({"ours": our_step, "torch": torch_step}, repeats)
  row["train_step"] = {"ours_s": times["ours"], "torch_s": times["torch"], "speedup": times["torch"] / times["ours"]}
  return row


def head_scaling(sizes, repeats) -> dict:
  cfg = dvlm.get_config("mid")
  c = cfg.text.hidden_size
  rows = []
  torch.manual_seed(0)
  theirs = TorchDPT(c, cfg.depth_head).eval()
  sd = {f"depth_head.{k}": v.detach().numpy() for k, v in theirs.state_dict().items()}
  params = {"params": jax.tree.map(jnp.asarray, keymap.hf_to_params(sd, cfg)["depth_head"])}
  for hw in sizes:
    grid = (hw[0] // cfg.vision.token_size, hw[1] // cfg.vision.token_size)
    feats = np.random.default_rng(0).standard_normal((4, 1, grid[0] * grid[1], c)).astype(np.float32)
    head = depth_head.DPTHead(cfg.depth_head, token_size=cfg.vision.token_size)
    fn = jax.jit(lambda p, f: head.apply(p, list(f), grid))
    jf = jnp.asarray(feats)
    tf = [torch.tensor(f) for f in feats]

    def ours():
      return jax.block_until_ready(fn(params, jf))

    def torch_head():
      with torch.inference_mode():
        return theirs(tf, grid)

    times = best_of({"ours": ours, "torch": torch_head}, repeats)
    rows.append({"image_hw": list(hw), "ours_s": times["ours"], "torch_s": times["torch"],
                 "speedup": times["torch"] / times["ours"]})
  out = {"sizes": rows}
  if len(rows) >= 2:
    a, b = rows[-2], rows[-1]
    px = math.log(np.prod(b["image_hw"]) / np.prod(a["image_hw"]))
    out["exponent"] = {k: math.log(b[f"{k}_s"] / a[f"{k}_s"]) / px for k in ("ours", "torch")}
  return out


def main(argv):
  del argv
  torch.set_num_threads(FLAGS.threads)
  results = {"device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(), "torch_threads": FLAGS.threads,
             "torch": torch.__version__, "transformers": transformers.__version__, "jax": jax.__version__,
             "prefill": prefill_and_step(hw_of(FLAGS.image), FLAGS.repeats),
             "head": head_scaling([hw_of(s) for s in FLAGS.head_sizes.split(",")], max(1, FLAGS.repeats // 2))}
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)

"""The training loop: stages in order on one mesh, each with its own pipeline, optimizer and
jitted step; stage N+1 starts from stage N's parameters. Periodic evaluation on held-out records
(per-image metrics against the training-median constant), TensorBoard + metrics.jsonl, a
progress line, depth pictures, orbax checkpoints, and the loss curve at the end.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from PIL import Image

from depthvlm_jax import experiment, loading, outputs, sharding
from depthvlm_jax.convert import pretrained
from depthvlm_jax.data import pipeline, shards, synthetic, text
from depthvlm_jax.infer import exports
from depthvlm_jax.model.vlm import DepthVLM
from depthvlm_jax.train import checkpoint, flops, report, step as step_lib

KIND = "train"  # the outputs marker of a workdir
RESULTS = "results.json"


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. too many non-finite steps in a row); the message says why."""


RUN_FILES = (checkpoint.DIR, report.METRICS_FILE, report.TENSORBOARD_DIR, "pictures", RESULTS, "loss_curve.png",
             experiment.CONFIG_FILE)


def check_workdir(workdir: str, overwrite: bool = False) -> Path:
  """The workdir exists, is writable and holds no other run (fails at start, not after stage 1).
  With `overwrite`, an earlier run's own files are removed first; nothing else is touched."""
  path = Path(workdir)
  outputs.check_destination(path, KIND, overwrite, replaces="its checkpoints, logs and pictures are replaced")
  ours = (outputs.read_marker(path) or {}).get("kind") == KIND  # only then are these names our files
  earlier = [path / name for name in RUN_FILES if ours and (path / name).exists()]
  if earlier and not overwrite:
    step = checkpoint.latest_step(str(path))
    raise outputs.OutputExistsError(
        f"{workdir} holds an earlier run ({'checkpoint step ' + str(step) if step is not None else 'no checkpoint'}): "
        "resuming is not supported yet; choose a new --workdir, or pass --overwrite to train it again from the start")
  try:
    path.mkdir(parents=True, exist_ok=True)
    for old in earlier:
      shutil.rmtree(old) if old.is_dir() else old.unlink()
    outputs.write_marker(path, KIND)
  except OSError as e:
    raise OSError(f"workdir {workdir} is not writable ({e.strerror or e}): choose another --workdir") from e
  return path


def render_demo_data(c) -> None:
  """Renders the config's synthetic train/eval shards (data.render) unless they exist."""
  r = c.data.render
  if not r.dir:
    return
  for split, num, seed in (("train", r.train, r.seed), ("eval", r.eval, r.eval_seed)):
    out = Path(r.dir) / split
    if num and not list(out.glob("*.array_record")):
      logging.info("rendering %d synthetic %s scenes into %s", num, split, out)
      start = time.time()
      records = synthetic.generate(num, synthetic.SceneConfig(kind=r.kind), seed0=seed, split=split)
      shards.write_shards(records, out, f"synthetic_{split}")
      print(f"rendered {num} synthetic {split} scenes into {out} ({time.time() - start:.0f} s)", flush=True)


def init_params(exp: experiment.Experiment, shardings):
  """From the config's model.init_from (HF dir or a workdir), else random (from scratch). A
  Qwen3-VL checkpoint has no depth head: the head then starts fresh (DepthVLM's stage 1)."""
  fresh = jax.jit(lambda: pretrained.init_params(exp.model, seed=exp.config.seed), out_shardings=shardings)
  source = exp.config.model.init_from
  if not source:
    return fresh()
  numerics = {k: getattr(exp.model, k) for k in ("dtype", "param_dtype", "remat_policy", "attention_impl")}
  model, loaded = loading.load_pretrained(source, **numerics)
  if model.cfg.replace(depth_head=exp.model.depth_head) != exp.model or (
      model.cfg.depth_head is not None and model.cfg.depth_head != exp.model.depth_head):
    raise experiment.ConfigError(f"config.model.init_from={source!r} holds another model than config.model "
                                 f"(vision {model.cfg.vision}, text {model.cfg.text}, head {model.cfg.depth_head})")
  if model.cfg.depth_head is None and exp.model.depth_head is not None:
    loaded = {**loaded, "depth_head": fresh()["depth_head"]}
  return jax.device_put(loaded, shardings)


class Evaluator:
  """Held-out metrics (mean over images), the training-median baseline, and pictures."""

  def __init__(self, exp: experiment.Experiment, model: DepthVLM, mesh, median: float):
    self.exp, self.mesh, self.median = exp, mesh, median
    self.cfg = exp.eval_pipeline()
    tok = text.load_tokenizer(exp.config.data.tokenizer)
    self.evaluate = exp.task.evaluator(model, tok, tuple(exp.config.data.image_hw))

  def __call__(self, params) -> tuple[dict[str, float], list[np.ndarray]]:
    per, base, pictures = {}, {}, []
    limit = self.exp.config.eval.num_batches
    for i, host in enumerate(pipeline.build(self.cfg)):
      if limit and i >= limit:
        break
      values, outs = self.evaluate(params, pipeline.to_global(host, self.mesh))
      for k, v in values.items():
        per.setdefault(k, []).append(v)
      for k, v in self.exp.task.constant_metrics(self.median, host).items():
        base.setdefault(k, []).append(v)
      if "depth" in outs:
        for j in range(min(len(outs["depth"]), self.exp.config.eval.pictures - len(pictures))):
          pictures.append(exports.depth_figure(host["image"][j], outs["depth"][j], host["depth"][j],
                                               host["depth_valid"][j]))
    mean = lambda parts: {k: float(np.nanmean(np.concatenate(v))) for k, v in parts.items()}
    result = {f"eval/{k}": v for k, v in mean(per).items()}
    result.update({f"eval/median_baseline/{k}": v for k, v in mean(base).items()})
    result["eval/images"] = int(sum(np.isfinite(v).sum() for v in per.get("delta1", [])))
    return result, pictures


def training_median(exp: experiment.Experiment, stage: experiment.Stage, batches: int = 16) -> float:
  """The median labelled depth of the first training batches: the best constant to beat."""
  values = []
  for i, host in enumerate(pipeline.build(exp.train_pipeline(stage))):
    if i >= batches:
      break
    values.append(exp.task.targets(host))
  values = np.concatenate(values) if values else np.zeros(0)
  return float(np.median(values)) if values.size else 1.0


def run(exp: experiment.Experiment, workdir: str, overwrite: bool = False) -> dict[str, Any]:
  """Trains every stage of the experiment; returns the final eval metrics (also in results.json)."""
  c = exp.config
  path = check_workdir(workdir, overwrite)
  (path / experiment.CONFIG_FILE).write_text(experiment.to_json(c))
  render_demo_data(c)
  mesh = sharding.make_mesh(tuple(c.mesh.shape))
  model = DepthVLM(exp.model)
  lead = jax.process_index() == 0
  writer = report.MetricWriter(path, enabled=lead)
  mngr = checkpoint.manager(str(path), keep=c.checkpoint.keep)
  param_shardings = sharding.param_shardings(pretrained.abstract_params(exp.model), mesh, c.mesh.rules)
  params = init_params(exp, param_shardings)
  evaluator = Evaluator(exp, model, mesh, training_median(exp, exp.stages[0])) if c.eval.sources else None
  global_step, result, state = 0, {}, None
  try:
    for stage in exp.stages:
      state, global_step, result = _run_stage(exp, stage, model, mesh, params, writer, mngr, evaluator, global_step,
                                              path)
      params = state.params
    if evaluator is not None:
      result = _evaluate(evaluator, params, writer, global_step, path, "final")
    if not (c.checkpoint.every_steps and global_step % c.checkpoint.every_steps == 0):  # else saved already
      checkpoint.save(mngr, global_step, state.params, state.opt_state,
                      {"step": global_step, "stage": exp.stages[-1].name})
    mngr.wait_until_finished()
  finally:
    writer.close()
    mngr.close()
  if lead:
    outputs.write_json(path / RESULTS, {"step": global_step, **result})
    report.plot_curves(path / "metrics.jsonl", path / "loss_curve.png")
  return result


def _run_stage(exp, stage, model, mesh, params, writer, mngr, evaluator, global_step, path):
  c = exp.config
  cfg = stage.step
  logging.info("stage %s: %d steps of %d images, training %s", stage.name, stage.steps, stage.batch_size,
               list(cfg.optimizer.trainable))
  shardings = step_lib.state_shardings(model, mesh, c.mesh.rules, cfg)
  state = jax.jit(lambda p: step_lib.init_state(p, cfg), out_shardings=shardings)(params)
  train_step = step_lib.jit_step(step_lib.make_step(model, exp.task, cfg), shardings, mesh)
  data_cfg = exp.train_pipeline(stage)
  seq_len = pipeline.sequence_length(data_cfg, text.load_tokenizer(c.data.tokenizer))
  step_flops = flops.step_flops(model, stage.batch_size, tuple(c.data.image_hw), seq_len, cfg.optimizer.trainable,
                                with_depth="depth" in {k for k, w in cfg.loss_weights.items() if w})
  peak = flops.peak_flops()
  progress = report.Progress(stage.steps, every=c.log.every_steps, batch_size=stage.batch_size,
                             enabled=jax.process_index() == 0)
  data = iter(pipeline.build(data_cfg))
  result, skipped_records, window_start, window_steps = {}, 0, time.time(), 0
  for i in range(1, stage.steps + 1):
    host = next(data)
    skipped_records += pipeline.skipped_in(host)
    with sharding.use_mesh(mesh, c.mesh.rules):
      state, metrics = train_step(state, pipeline.to_global(host, mesh))
    global_step += 1
    window_steps += 1
    if i % c.log.every_steps == 0 or i == stage.steps:
      metrics = jax.device_get(metrics)
      elapsed = time.time() - window_start
      rate = window_steps / max(elapsed, 1e-9)
      scalars = {k: float(v) for k, v in metrics.items() if k != "finite"}
      scalars.update({"steps_per_s": rate, "images_per_s": rate * stage.batch_size,
                      "tokens_per_s": rate * float(np.sum(host["attention_mask"])) * jax.process_count(),
                      "skipped_updates": int(state.skipped), "skipped_records": skipped_records,
                      "model_tflops_per_step": step_flops.train / 1e12})
      if peak:
        scalars["mfu"] = step_flops.train * rate / peak
      writer.write_scalars(global_step, {f"{stage.name}/{k}" if k.startswith("loss") else k: v
                                         for k, v in scalars.items()})
      progress.update(i, loss=scalars["loss"], lr=scalars["lr"])
      window_start, window_steps = time.time(), 0
      if int(state.skipped_in_row) > c.log.max_skipped_in_row:
        raise TrainingError(f"stage {stage.name}: {int(state.skipped_in_row)} updates in a row had a non-finite "
                            "loss or gradient: lower stages.*.lr, check the data (depthvlm-data show), or raise "
                            "log.max_skipped_in_row")
    if evaluator is not None and c.eval.every_steps and i % c.eval.every_steps == 0 and i != stage.steps:
      result = _evaluate(evaluator, state.params, writer, global_step, path, f"{stage.name}_{i}")
    if c.checkpoint.every_steps and global_step % c.checkpoint.every_steps == 0:
      checkpoint.save(mngr, global_step, state.params, state.opt_state, {"step": global_step, "stage": stage.name})
  if evaluator is not None and len(exp.stages) > 1:
    result = _evaluate(evaluator, state.params, writer, global_step, path, f"{stage.name}_end")
  return state, global_step, result


def _evaluate(evaluator, params, writer, step, path: Path, tag: str) -> dict[str, float]:
  start = time.time()
  result, pictures = evaluator(params)
  writer.write_scalars(step, result)
  writer.write_images(step, {f"eval/depth_{i}": p for i, p in enumerate(pictures)})
  if jax.process_index() == 0:
    (path / "pictures").mkdir(exist_ok=True)
    for i, p in enumerate(pictures):
      with outputs.atomic_file(path / "pictures" / f"{tag}_{i}.png") as f:
        Image.fromarray(p).save(f, format="PNG")
  shown = {k.removeprefix("eval/"): round(v, 4) for k, v in result.items() if "/" not in k.removeprefix("eval/")}
  print(f"eval at step {step} ({tag}, {time.time() - start:.0f} s): {json.dumps(shown)}; training-median "
        f"baseline delta1 {result.get('eval/median_baseline/delta1', float('nan')):.3f}", flush=True)
  return result

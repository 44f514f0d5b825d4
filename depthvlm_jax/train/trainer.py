"""The training loop: stages in order on one mesh, each with its own pipeline, optimizer and
jitted step; stage N+1 starts from stage N's parameters. Periodic evaluation on held-out records
(per-image metrics against the training-median constant), TensorBoard + metrics.jsonl, a
progress line, depth pictures, orbax checkpoints, and the loss curve at the end.
"""

from __future__ import annotations

import json
import shutil
import time
import zlib
from pathlib import Path
from typing import Any, Optional

import flax.linen as nn

import jax
import numpy as np
from absl import logging
from PIL import Image

from depthvlm_jax import experiment, loading, outputs, sharding
from depthvlm_jax.convert import pretrained
from depthvlm_jax.data import pipeline, shards, synthetic, text
from depthvlm_jax.infer import exports
from depthvlm_jax.model.vlm import DepthVLM
from depthvlm_jax.train import checkpoint, flops, preemption, report, step as step_lib

KIND = "train"  # the outputs marker of a workdir
RESULTS = experiment.RESULTS_FILE


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. too many non-finite steps in a row); the message says why."""


RUN_FILES = (checkpoint.DIR, report.METRICS_FILE, report.TENSORBOARD_DIR, "pictures", RESULTS, "loss_curve.png",
             experiment.CONFIG_FILE)
# What a resumed run must share with the run that wrote its checkpoints: the saved parameters,
# optimizer and data-iterator states mean nothing otherwise. The mesh, evaluation, logging and
# checkpoint settings may change (a checkpoint restores onto any mesh).
SAME_ON_RESUME = ("task", "task_options", "seed", "model", "data", "stages")


def prepare_workdir(workdir: str, c, overwrite: bool = False) -> tuple[Path, Optional[checkpoint.Position]]:
  """Checks the workdir at start (not after stage 1) and returns it with the checkpoint to
  resume from: the same command run again goes on from the latest committed checkpoint of the
  same experiment. With `overwrite`, an earlier run's own files are removed and the run starts
  over; nothing else in the directory is touched."""
  experiment.check_local("--workdir", workdir)
  path = Path(workdir)
  if jax.process_index() != 0:  # process 0 checks and writes; the others follow its decision
    sharding.barrier("workdir ready", c.distributed.barrier_timeout_s)
    return path, checkpoint.latest(str(path))
  outputs.check_destination(path, KIND, overwrite, replaces="its checkpoints, logs and pictures are replaced")
  ours = (outputs.read_marker(path) or {}).get("kind") == KIND  # only then are these names our files
  earlier = [path / name for name in RUN_FILES if ours and (path / name).exists()]
  resume = None
  if earlier and not overwrite:
    resume = checkpoint.latest(str(path))
    _check_same_experiment(path, c, resume)
    if resume is not None and resume.processes != jax.process_count():
      raise experiment.ConfigError(
          f"{path}: checkpoint step {resume.step} was saved by {resume.processes} processes, this run has "
          f"{jax.process_count()}: its data-iterator states fit only {resume.processes}; resume with as many, or "
          f"train a new --workdir with --config.model.init_from={path}")
    earlier = [] if resume else earlier  # no checkpoint yet: the same run starts again
  try:
    path.mkdir(parents=True, exist_ok=True)
    for old in earlier:
      shutil.rmtree(old) if old.is_dir() else old.unlink()
    outputs.write_marker(path, KIND)
    with outputs.atomic_file(path / experiment.CONFIG_FILE, "w") as f:
      f.write(experiment.to_json(c))
  except OSError as e:
    raise OSError(f"workdir {workdir} is not writable ({e.strerror or e}): choose another --workdir") from e
  sharding.barrier("workdir ready", c.distributed.barrier_timeout_s)
  return path, resume


def _check_same_experiment(path: Path, c, resume: Optional[checkpoint.Position]) -> None:
  saved_file = path / experiment.CONFIG_FILE
  at = f"checkpoint step {resume.step}" if resume else "no checkpoint"
  if not saved_file.is_file():
    raise outputs.OutputExistsError(f"{path} holds an earlier run ({at}) without its {experiment.CONFIG_FILE}: "
                                    "choose a new --workdir, or pass --overwrite to train again from the start")
  saved = json.loads(saved_file.read_text(encoding="utf-8"))
  now = json.loads(experiment.to_json(c))
  for tree in (saved, now):  # where the first run's weights came from does not matter any more
    (tree.get("model") or {}).pop("init_from", None)
  for section in SAME_ON_RESUME:
    key = _first_difference(saved.get(section), now.get(section), section)
    if key is not None:
      old, new = _lookup(saved, key), _lookup(now, key)
      raise experiment.ConfigError(
          f"config.{key}={new!r} but the run in {path} ({at}) has {old!r}: resuming needs the same experiment "
          "(the saved parameters, optimizer and data-iterator states fit only it); use the run's setting, "
          "choose a new --workdir, or pass --overwrite to train again from the start")


def _first_difference(a, b, key: str) -> Optional[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      found = _first_difference(a.get(k), b.get(k), f"{key}.{k}")
      if found is not None:
        return found
    return None
  return None if a == b else key


def _lookup(tree, key: str):
  for part in key.split("."):
    tree = tree.get(part) if isinstance(tree, dict) else None
  return tree


def render_demo_data(c) -> None:
  """Renders the config's synthetic train/eval shards (data.render) unless they exist (on
  process 0; the others wait)."""
  r = c.data.render
  if not r.dir:
    return
  if jax.process_index() == 0:
    _render(r, experiment.scene_config(c))
  sharding.barrier("demo data rendered", c.distributed.barrier_timeout_s)


def _render(r, scenes: synthetic.SceneConfig) -> None:
  for split, num, seed in (("train", r.train, r.seed), ("eval", r.eval, r.eval_seed)):
    out = Path(r.dir) / split
    if num and not list(out.glob("*.array_record")):
      logging.info("rendering %d synthetic %s scenes into %s", num, split, out)
      start = time.time()
      records = synthetic.generate(num, scenes, seed0=seed, split=split, workers=r.workers)
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
  """Trains every stage of the experiment, or goes on from the workdir's latest checkpoint of the
  same experiment; returns the final eval metrics (also in results.json). A SIGTERM saves at the
  current step and returns {"preempted_at_step": N} early."""
  c = exp.config
  path, resume = prepare_workdir(workdir, c, overwrite)
  if resume is not None:
    print(f"resuming {path} from checkpoint step {resume.step} ({resume.stage}, step {resume.stage_step})", flush=True)
  render_demo_data(c)
  mesh = sharding.make_mesh(tuple(c.mesh.shape))
  model = DepthVLM(exp.model)
  lead = jax.process_index() == 0
  param_shardings = sharding.param_shardings(pretrained.abstract_params(exp.model), mesh, c.mesh.rules)
  first, params, global_step = 0, None, 0
  resumed_step = None if resume is None else resume.step
  if resume is not None:
    first = [s.name for s in exp.stages].index(resume.stage)
    global_step = resume.step
    if resume.stage_step == exp.stages[first].steps:  # saved at the stage's end: the next one starts from it
      abstract = checkpoint.abstract_like(nn.unbox(pretrained.abstract_params(exp.model)), param_shardings)
      params, _ = checkpoint.restore_params(str(path), abstract, resume.step)
      first, resume = first + 1, None
  if first == len(exp.stages) and (path / RESULTS).is_file():
    print(f"{path} finished training at step {global_step}; its results are in {path / RESULTS}", flush=True)
    return json.loads((path / RESULTS).read_text(encoding="utf-8"))
  if params is None and resume is None:  # a new run
    params = init_params(exp, param_shardings)
  writer = report.MetricWriter(path, enabled=lead, resume_step=resumed_step)
  mngr = checkpoint.manager(str(path), keep=c.checkpoint.keep, keep_every=c.checkpoint.keep_every)
  evaluator = Evaluator(exp, model, mesh, training_median(exp, exp.stages[0])) if c.eval.sources else None
  result = {}
  try:
    with preemption.Preemption(mngr) as stop:
      for k in range(first, len(exp.stages)):
        run_stage = _StageRun(exp, exp.stages[k], model, mesh, mngr, writer, evaluator, path, stop)
        params, global_step, result = run_stage(params, global_step, resume if k == first else None)
        if run_stage.preempted:
          mngr.wait_until_finished()
          print(f"preempted: saved checkpoint step {global_step}; run the same command to resume", flush=True)
          return {"preempted_at_step": global_step}
    if evaluator is not None:
      result = _evaluate(evaluator, params, writer, global_step, path, "final")
    mngr.wait_until_finished()
  finally:
    writer.close()
    mngr.close()
  if lead:
    median = {} if evaluator is None else {"training_median": evaluator.median}
    outputs.write_json(path / RESULTS, {"step": global_step, **median, **result})
    report.plot_curves(path / "metrics.jsonl", path / "loss_curve.png")
  return result


class _StageRun:
  """One stage: its optimizer state, pipeline and jitted step; from the stage's start or from a
  checkpoint inside it. Saves every checkpoint.every_steps and at the stage's end."""

  def __init__(self, exp, stage, model, mesh, mngr, writer, evaluator, path: Path, stop):
    self.exp, self.stage, self.model, self.mesh, self.mngr = exp, stage, model, mesh, mngr
    self.writer, self.evaluator, self.path, self.stop = writer, evaluator, path, stop
    self.preempted = False

  def _initial_state(self, params, shardings, data, resume: Optional[checkpoint.Position]):
    cfg = self.stage.step
    if resume is None:
      return jax.jit(lambda p: step_lib.init_state(p, cfg), out_shardings=shardings)(params), 0
    abstract = jax.eval_shape(lambda p: step_lib.init_state(p, cfg), nn.unbox(pretrained.abstract_params(self.exp.model)))
    params, opt_state = checkpoint.restore(self.mngr, resume.step, checkpoint.abstract_like(abstract, shardings), data)
    counter = lambda v: jax.device_put(np.int32(v), shardings.step)
    state = step_lib.TrainState(counter(resume.stage_step), params, opt_state, counter(resume.skipped),
                                counter(resume.skipped_in_row))
    return state, resume.skipped_records

  def __call__(self, params, global_step: int, resume: Optional[checkpoint.Position]):
    exp, stage, mesh, c = self.exp, self.stage, self.mesh, self.exp.config
    cfg = stage.step
    start = 0 if resume is None else resume.stage_step
    logging.info("stage %s: steps %d to %d of %d images, training %s", stage.name, start + 1, stage.steps,
                 stage.batch_size, list(cfg.optimizer.trainable))
    shardings = step_lib.state_shardings(self.model, mesh, c.mesh.rules, cfg)
    data_cfg = exp.train_pipeline(stage)
    data = iter(pipeline.build(data_cfg))
    state, skipped_records = self._initial_state(params, shardings, data, resume)
    train_step = step_lib.jit_step(step_lib.make_step(self.model, exp.task, cfg), shardings, mesh)
    seq_len = pipeline.sequence_length(data_cfg, text.load_tokenizer(c.data.tokenizer))
    step_flops = flops.step_flops(exp.model, stage.batch_size, tuple(c.data.image_hw), seq_len,
                                  cfg.optimizer.trainable,
                                  with_depth="depth" in {k for k, w in cfg.loss_weights.items() if w})
    peak = flops.peak_flops()
    progress = report.Progress(stage.steps, every=c.log.every_steps, batch_size=stage.batch_size, start_step=start,
                               enabled=jax.process_index() == 0)
    result, window_start, window_steps, saved, compiled = {}, time.time(), 0, None, None

    def save(i):
      checkpoint.save(self.mngr, state, checkpoint.Position(global_step, stage.name, i, int(state.skipped),
                                                            int(state.skipped_in_row), skipped_records,
                                                            jax.process_count()), data)
      return global_step

    try:
      for i in range(start + 1, stage.steps + 1):
        host = next(data)
        skipped_records += pipeline.skipped_in(host)
        batch = pipeline.to_global(host, mesh)
        with sharding.use_mesh(mesh, c.mesh.rules):
          if compiled is None:
            compiled = sharding.compile_together(f"{stage.name} step", train_step, state, batch,
                                                 barrier_timeout_s=c.distributed.barrier_timeout_s)
          state, metrics = compiled(state, batch)
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
          if c.log.batch_crc32:
            scalars["batch_crc32"] = zlib.crc32(np.ascontiguousarray(host["image"]).tobytes())
          if peak:
            scalars["mfu"] = step_flops.train * rate / peak
          self.writer.write_scalars(global_step, {f"{stage.name}/{k}" if k.startswith("loss") else k: v
                                                  for k, v in scalars.items()})
          progress.update(i, loss=scalars["loss"], lr=scalars["lr"])
          window_start, window_steps = time.time(), 0
          if int(state.skipped_in_row) > c.log.max_skipped_in_row:
            raise TrainingError(f"stage {stage.name}: {int(state.skipped_in_row)} updates in a row had a non-finite "
                                "loss or gradient: lower stages.*.lr, check the data (depthvlm-data show), or raise "
                                "log.max_skipped_in_row")
        if (c.checkpoint.every_steps and global_step % c.checkpoint.every_steps == 0) or i == stage.steps:
          saved = save(i)
        if self.stop.reached(global_step):
          if saved != global_step:
            save(i)
          self.preempted = True
          return state.params, global_step, result
        if self.evaluator is not None and c.eval.every_steps and i % c.eval.every_steps == 0 and i != stage.steps:
          result = _evaluate(self.evaluator, state.params, self.writer, global_step, self.path, f"{stage.name}_{i}")
    finally:
      data.close()
    if self.evaluator is not None and stage is not exp.stages[-1]:  # the last one's is the final evaluation
      result = _evaluate(self.evaluator, state.params, self.writer, global_step, self.path, f"{stage.name}_end")
    return state.params, global_step, result


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

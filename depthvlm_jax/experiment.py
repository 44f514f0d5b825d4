"""Experiments: one ml_collections ConfigDict (configs/NAME.py:get_config(arg)) -> the library's
frozen dataclasses, checked once, with errors that name the config key.

Sections: task, model, data, eval, stages (run in order), mesh, checkpoint, log, distributed. The config
files build them with the helpers below, so every experiment has the same keys, an unknown
key fails at start (the dict is locked), and the resolved config is what a run writes into its
workdir, which eval, predict and resume then read instead of re-declaring the facts as flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Optional

import ml_collections
from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder

from depthvlm_jax import sharding, tasks
from depthvlm_jax.data import pipeline, synthetic
from depthvlm_jax.model.config import DepthHeadConfig, ModelConfig, TextConfig, VisionConfig, get_config, validate
from depthvlm_jax.train.optimizer import OptimizerConfig
from depthvlm_jax.train.step import StepConfig

CONFIG_FILE = "experiment.json"  # the resolved experiment config, in the workdir
RESULTS_FILE = "results.json"  # a finished run's final metrics (and its training median)
LLM = ("language_model/.*", "embed_tokens/.*", "lm_head/.*")  # what stage 2 trains besides the head


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


# --- Sections (used by configs/*.py) ---------------------------------------------------------

def model_section(preset: str, **overrides: dict) -> ConfigDict:
  """Every ModelConfig field of a preset, with `vision=dict(...)`, `text=...`, `depth_head=...`
  (None: no head) and top-level overrides; so any field can be overridden with --config.model.X."""
  cfg = get_config(preset)
  head = overrides.pop("depth_head", {})
  section = {"preset": preset, "init_from": placeholder(str)}
  for name, sub in (("vision", cfg.vision), ("text", cfg.text)):
    section[name] = ConfigDict({**dataclasses.asdict(sub), **overrides.pop(name, {})})
  section["depth_head"] = None if head is None else ConfigDict({**dataclasses.asdict(cfg.depth_head or DepthHeadConfig()),
                                                                **head})
  top = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("vision", "text", "depth_head")}
  section.update({**top, **overrides})
  return ConfigDict(section)


def source(paths: str = "", weight: float = 1.0) -> ConfigDict:
  """A dataset of a mixture: ArrayRecord shards (glob, folder or path) and its sampling weight."""
  return ConfigDict({"paths": paths, "weight": weight})


def stage_section(*, steps: int, batch_size: int, lr: float, trainable, loss_weights: dict,
                  warmup_frac: float = 0.0, **kw: Any) -> ConfigDict:
  """One training stage: its batch, schedule, trainable patterns and loss weights."""
  section = dict(steps=steps, batch_size=batch_size, lr=lr, warmup_frac=warmup_frac, end_lr_frac=0.0,
                 weight_decay=0.0, b1=0.9, b2=0.999, grad_clip=1.0, grad_accum=1, trainable=tuple(trainable),
                 lr_multipliers=(), loss_weights=ConfigDict({"depth": 0.0, "ce": 0.0, "z_loss": 0.0, **loss_weights}),
                 detach_head_inputs=False)
  section.update(kw)
  return ConfigDict(section)


def base_config() -> ConfigDict:
  """Every key an experiment has, with defaults; configs fill in the rest."""
  c = ConfigDict()
  c.task = "depthvlm"
  c.task_options = ConfigDict()
  c.seed = 0
  c.model = model_section("tiny")
  c.data = ConfigDict(dict(
      image_hw=(256, 320), canonical_fx=1000.0, crop="random", tokenizer=placeholder(str), seq_len=0, max_points=100,
      worker_count=0, read_threads=2, prefetch_batches=2, on_bad_record="skip", train=ConfigDict(),
      # Synthetic scenes rendered into `dir` when absent (the CPU demo): train and held-out eval
      # shards from disjoint seeds, in `workers` processes (0: one per CPU core); `scene` overrides
      # fields of synthetic.SceneConfig (image sizes, fields of view, ...).
      render=ConfigDict(dict(dir="", train=0, eval=0, seed=0, eval_seed=1_000_000, kind="mixed", workers=0,
                             scene=ConfigDict()))))
  # buckets: the static input sizes (H, W) the predictor and depthvlm-eval pad whole images into;
  # an image that fits none rounds up to multiples of bucket_multiple (one compile per size).
  c.eval = ConfigDict(dict(sources=ConfigDict(), every_steps=0, batch_size=8, num_batches=4, pictures=4,
                           buckets=(), bucket_multiple=128, max_new_tokens=32))
  c.stages = ConfigDict()
  c.mesh = ConfigDict(dict(shape=(1, -1, 1), rules="fsdp"))
  # Checkpoints every `every_steps` and at each stage's end; the last `keep` are kept, and every
  # `keep_every`-th step besides (0: none).
  c.checkpoint = ConfigDict(dict(every_steps=0, keep=2, keep_every=0))
  # batch_crc32: log a checksum of each logged batch's images (to check that a resumed run reads
  # the same batches as an uninterrupted one).
  c.log = ConfigDict(dict(every_steps=10, max_skipped_in_row=20, batch_crc32=False))
  # Multi-host: `enabled` calls jax.distributed.initialize() before anything else, with the
  # coordinator given here or, when it is empty, detected from the cluster (TPU pod, SLURM,
  # Open MPI, Kubernetes). Processes wait for each other (data rendering, compilation) up to
  # barrier_timeout_s.
  c.distributed = ConfigDict(dict(enabled=False, coordinator_address="", num_processes=0, process_id=-1,
                                  barrier_timeout_s=3600))
  return c


# --- Building the library's dataclasses --------------------------------------------------------

def _fail(key: str, value, problem: str):
  raise ConfigError(f"config.{key}={value!r}: {problem}")


URL_HELP = ("URLs (gs://, s3://) are not read yet: mount the bucket at the same path on every host "
            "(Cloud Storage FUSE; README 'Launching on pods and clusters') and give that path")


def check_local(key: str, value) -> None:
  """Paths are read with the local filesystem API: a URL would silently become a local folder."""
  if isinstance(value, str) and "://" in value:
    raise ConfigError(f"{key}={value!r}: {URL_HELP}")


def _kwargs(section: ConfigDict) -> dict:
  """A config section as dataclass keyword arguments (config files and JSON give lists where
  the dataclasses hold tuples)."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}


def model_config(c: ConfigDict) -> ModelConfig:
  m = c.model
  vision = VisionConfig(**_kwargs(m.vision))
  text = TextConfig(**_kwargs(m.text))
  head = None if m.depth_head is None else DepthHeadConfig(**_kwargs(m.depth_head))
  top = {k: v for k, v in m.items() if k not in ("preset", "init_from", "vision", "text", "depth_head")}
  try:
    return validate(ModelConfig(vision=vision, text=text, depth_head=head, **top))
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.model: {e}") from e


def task_of(c: ConfigDict):
  try:
    return tasks.get(c.task, **_kwargs(c.task_options))
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.task={c.task!r} / config.task_options: {e}") from e


def scene_config(c: ConfigDict) -> synthetic.SceneConfig:
  """The synthetic scenes data.render draws: kind plus the data.render.scene overrides."""
  r = c.data.render
  try:
    return synthetic.SceneConfig(kind=r.kind, **_kwargs(r.scene))
  except TypeError as e:
    raise ConfigError(f"config.data.render.scene: {e}; the fields are those of synthetic.SceneConfig") from e


def sources(section: ConfigDict, key: str) -> tuple[pipeline.Source, ...]:
  out = []
  for name, s in section.items():
    if not s.paths:
      _fail(f"{key}.{name}.paths", s.paths, "give ArrayRecord shards (a glob, folder or path)")
    if not (s.weight > 0 and math.isfinite(s.weight)):
      _fail(f"{key}.{name}.weight", s.weight, "must be a positive number")
    check_local(f"config.{key}.{name}.paths", s.paths)
    out.append(pipeline.Source(s.paths, weight=float(s.weight)))
  return tuple(out)


def pipeline_config(exp: Experiment, srcs, batch_size: int, train: bool, seed: int = 0) -> pipeline.PipelineConfig:
  d = exp.config.data
  return pipeline.PipelineConfig(
      task=exp.task, sources=srcs, image_hw=tuple(d.image_hw), token_size=exp.model.vision.token_size,
      canonical_fx=float(d.canonical_fx), crop=d.crop,
      batch_size=batch_size,
      seq_len=d.seq_len, max_points=d.max_points, train=train, shuffle=train, num_epochs=None if train else 1,
      seed=seed, worker_count=d.worker_count if train else 0, read_threads=d.read_threads,
      prefetch_batches=d.prefetch_batches, on_bad_record=d.on_bad_record, tokenizer_path=d.tokenizer)


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  steps: int
  batch_size: int
  step: StepConfig


def stage_of(name: str, s: ConfigDict) -> Stage:
  key = f"stages.{name}"
  for field in ("steps", "batch_size", "grad_accum"):
    if int(s[field]) < 1:
      _fail(f"{key}.{field}", s[field], "must be a positive integer")
  if s.batch_size % s.grad_accum:
    _fail(f"{key}.grad_accum", s.grad_accum, f"must divide the batch size {s.batch_size}")
  if not (s.lr > 0 and math.isfinite(s.lr)):
    _fail(f"{key}.lr", s.lr, "must be a positive learning rate")
  multipliers = []
  for item in s.lr_multipliers:
    pattern, sep, value = item.rpartition("=")
    if not sep:
      _fail(f"{key}.lr_multipliers", item, "entries are 'PATTERN=MULTIPLIER'")
    multipliers.append((pattern, float(value)))
  opt = OptimizerConfig(lr=float(s.lr), steps=int(s.steps), warmup_frac=float(s.warmup_frac),
                        end_lr_frac=float(s.end_lr_frac), weight_decay=float(s.weight_decay), b1=float(s.b1),
                        b2=float(s.b2), grad_clip=float(s.grad_clip), trainable=tuple(s.trainable),
                        lr_multipliers=tuple(multipliers))
  return Stage(name, int(s.steps), int(s.batch_size),
               StepConfig(opt, dict(s.loss_weights), int(s.grad_accum), bool(s.detach_head_inputs)))


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A checked experiment: what the trainer, the evaluator and the predictor need."""
  config: ConfigDict
  task: Any
  model: ModelConfig
  stages: tuple[Stage, ...]

  def train_pipeline(self, stage: Stage) -> pipeline.PipelineConfig:
    return pipeline_config(self, sources(self.config.data.train, "data.train"), stage.batch_size,
                           train=True, seed=self.config.seed)

  def eval_pipeline(self, batch_size: Optional[int] = None) -> Optional[pipeline.PipelineConfig]:
    if not self.config.eval.sources:
      return None
    return pipeline_config(self, sources(self.config.eval.sources, "eval.sources"),
                           batch_size or self.config.eval.batch_size, train=False)


def build(c: ConfigDict, num_devices: Optional[int] = None) -> Experiment:
  """Checks the config and builds the experiment; ConfigError names the first bad key."""
  model = model_config(c)
  task = task_of(c)
  if getattr(task, "needs_depth_head", False) and model.depth_head is None:
    _fail("model.depth_head", None, f"task {task.name!r} trains the depth head: give one")
  hw = tuple(c.data.image_hw)
  token = model.vision.token_size
  if len(hw) != 2 or any(int(s) <= 0 or int(s) % token for s in hw):
    _fail("data.image_hw", hw, f"both sides must be positive multiples of {token} (one LLM image token "
          f"covers {token}x{token} pixels)")
  if c.eval.bucket_multiple <= 0 or c.eval.bucket_multiple % token:
    _fail("eval.bucket_multiple", c.eval.bucket_multiple, f"must be a positive multiple of {token}")
  for b in c.eval.buckets:
    if len(b) != 2 or any(int(s) <= 0 or int(s) % token for s in b):
      _fail("eval.buckets", tuple(c.eval.buckets), f"each bucket is (H, W), positive multiples of {token}")
  if not (c.data.canonical_fx > 0 and math.isfinite(c.data.canonical_fx)):
    _fail("data.canonical_fx", c.data.canonical_fx, "must be a positive focal length in pixels")
  if c.data.crop not in ("random", "principal"):
    _fail("data.crop", c.data.crop, "use 'random' (random crops in training, centre crops in evaluation) or "
          "'principal' (windows centred on the principal point)")
  if c.data.on_bad_record not in ("skip", "raise"):
    _fail("data.on_bad_record", c.data.on_bad_record, "use 'skip' or 'raise'")
  if not c.stages:
    _fail("stages", {}, "an experiment needs at least one training stage")
  stages = tuple(stage_of(name, s) for name, s in c.stages.items())
  shape = tuple(c.mesh.shape)
  if num_devices is not None:
    batch_devices = _batch_devices(shape, num_devices)
    for st in stages:
      if (st.batch_size // st.step.grad_accum) % batch_devices:
        _fail(f"stages.{st.name}.batch_size", st.batch_size,
              f"each microbatch of {st.batch_size // st.step.grad_accum} must divide over the mesh's "
              f"data x fsdp = {batch_devices} devices")
    if c.eval.sources and c.eval.batch_size % batch_devices:
      _fail("eval.batch_size", c.eval.batch_size, f"must divide over the mesh's data x fsdp = {batch_devices} devices")
  if c.data.train:
    sources(c.data.train, "data.train")
  if c.eval.sources:
    sources(c.eval.sources, "eval.sources")
  scene_config(c)
  for key in ("model.init_from", "data.tokenizer", "data.render.dir"):
    check_local(f"config.{key}", _get(c, key))
  return Experiment(c, task, model, stages)


def _get(c: ConfigDict, key: str):
  for part in key.split("."):
    c = c.get(part) if c is not None else None
  return c


def init_distributed(c: ConfigDict) -> None:
  """Joins the multi-host job when config.distributed.enabled (before any other JAX work)."""
  d = c.distributed
  if d.enabled:
    sharding.init_distributed(d.coordinator_address or None, d.num_processes or None,
                              d.process_id if d.process_id >= 0 else None)


def _batch_devices(shape, num_devices: int) -> int:
  try:
    data, fsdp, _ = sharding.mesh_shape(shape, num_devices)
  except ValueError as e:
    raise ConfigError(f"config.mesh.shape={shape!r}: {e}") from e
  return data * fsdp


def to_json(c: ConfigDict) -> str:
  return c.to_json_best_effort(indent=2)


def from_json(text: str) -> ConfigDict:
  """The inverse of to_json (tuples come back as lists; the builders accept both)."""
  return ml_collections.ConfigDict(json.loads(text))

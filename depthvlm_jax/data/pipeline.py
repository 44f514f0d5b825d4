"""grain input pipelines: records -> static-shape batches, for any task (depthvlm_jax.tasks).

  sources (ArrayRecord shards | synthetic scenes), mixed by weight
    -> shuffle -> repeat -> this process's shard -> decode -> focal normalisation (canonical fx)
    -> [task augmentation] -> crop to the static size -> depth targets
    -> task example (image marks, question, answer) -> chat tokens
    -> batch -> (multiprocess prefetch) -> global jax.Array on the mesh

The task is an object with the `ExampleTask` methods; data/ never imports tasks/.

Every example has the same shapes, so the train step compiles once. A record that fails to
decode or transform either raises (`on_bad_record="raise"`) or becomes an example with
`weight` 0 and no valid target (`"skip"`): shapes stay static, the iterator state stays exact,
and the trainer counts skips from the batches (`skipped_in(batch)`), however many workers ran.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional, Protocol, Sequence

import grain
import jax
import numpy as np
from absl import logging

from depthvlm_jax.data import shards, synthetic, text, transforms
from depthvlm_jax.data.records import DepthRecord, RecordError
from depthvlm_jax.model.config import QWEN3_VL_TOKEN_SIZE


class TaskExample(NamedTuple):
  """What a task makes of one normalised, cropped example."""
  rgb: np.ndarray  # [H, W, 3] uint8, with the task's marks drawn (e.g. DepthLM's arrow)
  question: str
  answer: Optional[str]  # None: a prompt only (inference)
  query: np.ndarray  # float32 [3]: (x, y, z) of a queried point, zeros if none


class ExampleTask(Protocol):
  """The part of a task the pipeline calls (see depthvlm_jax.tasks)."""

  name: str

  def augment(self, example: transforms.Example, rng: np.random.Generator) -> transforms.Example:
    """Training-only augmentation after focal normalisation, before the static crop."""

  def example(self, example: transforms.Example, depth: np.ndarray, depth_valid: np.ndarray,
              rng: np.random.Generator) -> TaskExample:
    """The model's input image and text for one example (raise RecordError if unusable)."""

  def texts(self) -> Sequence[tuple[str, str]]:
    """(question, answer) pairs covering the longest text the task produces (sizes the batch)."""


@dataclasses.dataclass(frozen=True)
class Source:
  """One dataset of a mixture: ArrayRecord shards (a glob, dir or paths) or, with
  `synthetic=N`, N procedurally rendered scenes (rendered in the workers, no files)."""

  paths: Any = None
  weight: float = 1.0
  synthetic: int = 0
  synthetic_kind: str = "mixed"
  synthetic_seed: int = 0


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  task: Optional[ExampleTask] = None  # required: a depthvlm_jax.tasks object
  sources: tuple[Source, ...] = ()
  image_hw: tuple[int, int] = (256, 320)  # static (H, W), multiples of token_size
  token_size: int = QWEN3_VL_TOKEN_SIZE  # the model's pixels per LLM token (side)
  canonical_fx: float = 1000.0
  batch_size: int = 8  # global batch; each process loads batch_size / process_count
  seq_len: int = 0  # static text length; 0 = derived from the image size and the task's texts
  max_points: int = 100  # sparse labels kept per example (evaluation)
  train: bool = True  # task augmentation and random crops; otherwise centre crops
  # "random" (train) / "center" (eval) windows, or "principal": a window centred on the principal
  # point in training and evaluation alike (see transforms.principal_crop).
  crop: str = "random"
  shuffle: bool = True
  num_epochs: Optional[int] = None  # None = repeat forever
  seed: int = 0
  worker_count: int = 0  # 0 = load in the main process
  read_threads: int = 2  # threads per process decoding/transforming examples
  prefetch_batches: int = 2  # batches buffered per process (bounds host memory)
  on_bad_record: str = "skip"  # "skip" (weight-0 example, counted) | "raise"
  tokenizer_path: Optional[str] = None  # HF tokenizer dir/json; None = the shipped tiny one

  def validate(self) -> "PipelineConfig":
    if not all(hasattr(self.task, m) for m in ("augment", "example", "texts")):
      raise ValueError(f"data.task={self.task!r} is not a task: use depthvlm_jax.tasks.get(name)")
    if not self.sources:
      raise ValueError("data.sources is empty: give ArrayRecord paths or a synthetic source")
    if any(s % self.token_size for s in self.image_hw):
      raise ValueError(f"data.image_hw={self.image_hw}: both sides must be multiples of {self.token_size}")
    if self.crop not in ("random", "principal"):
      raise ValueError(f"data.crop={self.crop!r}: use 'random' or 'principal'")
    if self.on_bad_record not in ("skip", "raise"):
      raise ValueError(f"data.on_bad_record={self.on_bad_record!r}: use 'skip' or 'raise'")
    if self.batch_size % jax.process_count():
      raise ValueError(f"data.batch_size={self.batch_size} is not divisible by {jax.process_count()} processes")
    return self


def num_image_tokens(image_hw: Sequence[int], token_size: int) -> int:
  return (image_hw[0] // token_size) * (image_hw[1] // token_size)


def sequence_length(cfg: PipelineConfig, tok: text.Tokenizer) -> int:
  """The static text length: the longest chat the task produces (DepthLM answers vary with the
  number of digits), rounded up to a multiple of 8."""
  if cfg.seq_len:
    return cfg.seq_len
  n = num_image_tokens(cfg.image_hw, cfg.token_size)
  longest = max(len(text.chat_tokens(tok, n, q, a)[0]) for q, a in cfg.task.texts())
  return -(-longest // 8) * 8


class _RenderSynthetic(grain.transforms.Map):
  """Index -> serialised synthetic record (deterministic per index)."""

  def __init__(self, kind: str, seed: int):
    self.kind, self.seed = kind, seed

  def map(self, index: int) -> shards.RawRecord:
    cfg = synthetic.SceneConfig(kind=self.kind)
    seed = self.seed + int(index)
    return shards.RawRecord(f"synthetic scene {seed}", synthetic.make_record(seed, cfg, split="train").to_bytes())


def _source_dataset(src: Source) -> grain.MapDataset:
  if src.synthetic:
    return grain.MapDataset.range(src.synthetic).map(_RenderSynthetic(src.synthetic_kind, src.synthetic_seed))
  return grain.MapDataset.source(shards.ShardSource(src.paths))


class ExampleFn(grain.transforms.RandomMap):
  """A shards.RawRecord -> one example dict of fixed shapes."""

  def __init__(self, cfg: PipelineConfig):
    self.cfg = cfg
    self.tok = text.load_tokenizer(cfg.tokenizer_path)
    self.seq_len = sequence_length(cfg, self.tok)

  def random_map(self, raw: shards.RawRecord, rng: np.random.Generator) -> dict[str, np.ndarray]:
    try:
      return self._example(raw.decode(), rng)
    except (RecordError, ValueError) as e:
      if self.cfg.on_bad_record == "raise":
        raise
      logging.warning("skipping a bad record: %s", e)
      return self._empty()

  def _example(self, rec: DepthRecord, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cfg = self.cfg
    rgb = rec.decode_image()
    valid = rec.valid_mask() if rec.depth is not None else None
    ex = transforms.focal_normalize(rgb, rec.depth, valid, rec.points, rec.intrinsics, rec.depth_size,
                                    cfg.canonical_fx, key=rec.key)
    if cfg.train:
      ex = cfg.task.augment(ex, rng)
    if cfg.crop == "principal":
      ex = transforms.principal_crop(ex, cfg.image_hw)
    else:
      ex = transforms.random_crop(ex, cfg.image_hw, rng) if cfg.train else transforms.center_crop(ex, cfg.image_hw)
    depth, depth_valid = transforms.depth_targets(ex, rec.depth_range)
    task_ex = cfg.task.example(ex, depth, depth_valid, rng)
    ids, mask = text.chat_tokens(self.tok, num_image_tokens(cfg.image_hw, cfg.token_size), task_ex.question, task_ex.answer)
    points, points_valid = _fixed_points(ex.points, cfg.max_points)
    lo, hi = rec.depth_range
    in_range = points_valid & (points[:, 2] > lo) & (points[:, 2] <= hi)
    return self._pack(task_ex.rgb, depth, depth_valid, ex.pixel_mask, np.asarray(ex.intrinsics, np.float32), points,
                      in_range, np.asarray(task_ex.query, np.float32), ids, mask, weight=1.0)

  def _empty(self) -> dict[str, np.ndarray]:
    """The stand-in for a skipped record: same shapes, nothing valid, no loss, weight 0."""
    h, w = self.cfg.image_hw
    ids, mask = text.chat_tokens(self.tok, num_image_tokens(self.cfg.image_hw, self.cfg.token_size), "", None)
    points, points_valid = _fixed_points(None, self.cfg.max_points)
    return self._pack(np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.float32), np.zeros((h, w), bool),
                      np.zeros((h, w), bool), np.ones(4, np.float32), points, points_valid,
                      np.zeros(3, np.float32), ids, np.zeros_like(mask), weight=0.0)

  def _pack(self, image, depth, depth_valid, pixel_mask, intrinsics, points, points_valid, query, ids, loss_mask,
            weight) -> dict[str, np.ndarray]:
    toks = text.pad_batch([(ids, loss_mask)], self.seq_len, self.tok.pad_id)
    return dict(image=image, depth=depth, depth_valid=depth_valid, pixel_mask=pixel_mask, intrinsics=intrinsics,
                points=points, points_valid=points_valid, query=query, input_ids=toks.input_ids[0],
                attention_mask=toks.attention_mask[0], labels=toks.labels[0], weight=np.float32(weight))


def example_shapes(cfg: PipelineConfig) -> dict[str, jax.ShapeDtypeStruct]:
  """One example's shapes and dtypes as the pipeline makes them, without a record (for plans)."""
  return {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in ExampleFn(cfg)._empty().items()}


def _fixed_points(points: Optional[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
  out, valid = np.zeros((k, 3), np.float32), np.zeros(k, bool)
  if points is not None and len(points):
    n = min(len(points), k)
    out[:n], valid[:n] = points[:n], True
  return out, valid


def build(cfg: PipelineConfig, process_index: Optional[int] = None, process_count: Optional[int] = None):
  """The per-process grain pipeline: an IterDataset of batches of batch_size / process_count."""
  cfg = cfg.validate()
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  datasets = []
  for k, src in enumerate(cfg.sources):
    ds = _source_dataset(src)
    if cfg.shuffle:
      ds = ds.shuffle(seed=cfg.seed + 7919 * k)
    datasets.append(ds.repeat(cfg.num_epochs))
  ds = datasets[0] if len(datasets) == 1 else grain.MapDataset.mix(datasets, [s.weight for s in cfg.sources])
  # Examples are made (with their random augmentation) by their global index, then split over
  # processes: the global batch is the same set of examples whatever the process count.
  ds = ds.random_map(ExampleFn(cfg), seed=cfg.seed)[pi::pc]
  ds = ds.batch(cfg.batch_size // pc, drop_remainder=cfg.train)  # evaluation scores every record
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch_batches))
  if cfg.worker_count:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
  return it


def skipped_in(batch: dict[str, np.ndarray]) -> int:
  """How many examples of a batch stand for records that were skipped."""
  return int(np.sum(np.asarray(batch["weight"]) == 0))


def to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh,
              batch_axes: Sequence[str] = ("data", "fsdp")) -> dict[str, jax.Array]:
  """This process's slice of the batch -> global jax.Arrays split over the batch mesh axes."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(tuple(batch_axes)))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}

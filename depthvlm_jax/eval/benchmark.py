"""The unified benchmark runner: any ingested record sets, scored per dataset and domain.

  results = benchmark.run(predictor, {"nyuv2": "data/nyuv2/*", "kitti": "data/kitti/*"})
  print(benchmark.markdown(results))

Every record is focal-normalised and padded whole into a bucket (infer/canvas.py): no pixel and
no labelled point is cropped away, and XLA compiles one program per bucket. Two protocols:
  dense   every valid ground-truth pixel at the canonical resolution (records with a depth map)
  sparse  the labelled points, rescaled from the depth map's own size (the release scales them
          from the RGB size, which samples only a top-left region when the map is smaller)
A DepthVLM model is scored from its depth map; a DepthLM model (no depth head) answers one
question per labelled point in text, and a reply without a number scores 0. DepthLM's other
3-D questions (tasks/questions.py) are asked of labelled points too when `questions` names them.
Beside the model, the same records score the constant baselines (always 2.0 m, and the training
median when known), so a table says what a number is worth. Per image, then the mean over a
dataset's images, then the mean over datasets (the papers' "avg" column) and over each domain.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Mapping, Optional, Sequence

import numpy as np
from absl import logging

from depthvlm_jax.data import shards, transforms
from depthvlm_jax.data.records import DepthRecord, RecordError, located
from depthvlm_jax.eval import metrics
from depthvlm_jax.infer import canvas as canvas_lib, exports
from depthvlm_jax.infer.predictor import Predictor
from depthvlm_jax.tasks import questions
from depthvlm_jax.train import report

ALWAYS = 2.0  # metres: DepthVLM-Bench's "always 2.0 m" baseline
SHOWN = ("delta1", "delta2", "delta3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")


@dataclasses.dataclass(frozen=True)
class Options:
  protocols: tuple[str, ...] = ("sparse", "dense")
  questions: tuple[str, ...] = ()  # DepthLM's other questions to ask (e.g. "two_points")
  questions_per_image: int = 5
  points_per_image: int = 0  # sparse labels scored per image (the first ones; 0 = all)
  max_images: int = 0  # per record set (0 = all)
  empty: str = "zero"  # an image without a valid label scores 0 and counts (the release), or "nan"
  align: str = "none"  # "median": per-image median scaling (relative depth)
  train_median: Optional[float] = None  # the training-median baseline, when known
  on_bad_record: str = "skip"
  pictures: int = 0  # depth figures of the first images
  seed: int = 0  # which points the extra questions mark

  def validate(self) -> "Options":
    for p in self.protocols:
      if p not in ("sparse", "dense"):
        raise ValueError(f"protocol {p!r}: use 'sparse' and/or 'dense'")
    for q in self.questions:
      questions.get(q)
    if self.empty not in ("zero", "nan"):
      raise ValueError(f"empty={self.empty!r}: use 'zero' (the release) or 'nan'")
    if self.on_bad_record not in ("skip", "raise"):
      raise ValueError(f"on_bad_record={self.on_bad_record!r}: use 'skip' or 'raise'")
    return self


@dataclasses.dataclass
class _Item:
  """One record on its canvas, with its labels at the canonical resolution (bucket coordinates)."""
  index: int
  record: DepthRecord
  canvas: canvas_lib.Canvas
  depth: Optional[np.ndarray]  # [H, W] bucket-sized, or None (sparse only)
  valid: Optional[np.ndarray]
  points: Optional[np.ndarray]  # [N, 3] (col, row, z) in bucket coordinates
  points_valid: Optional[np.ndarray]


def _sources(data: Sequence, options: Options) -> list[tuple[str, shards.ShardSource, int]]:
  """(name, source, records to score) per record set."""
  out = []
  for paths in data:
    source = shards.ShardSource(paths)
    out.append((str(paths), source, min(len(source), options.max_images) if options.max_images else len(source)))
  return out


def _item(predictor: Predictor, index: int, rec: DepthRecord, options: Options) -> _Item:
  rgb = rec.decode_image()
  valid = rec.valid_mask() if rec.depth is not None else None
  points = rec.points
  if points is not None and options.points_per_image:
    points = points[:options.points_per_image]
  cv = predictor.canvas(rgb, rec.intrinsics, points=points, depth=rec.depth, valid=valid, depth_size=rec.depth_size,
                        key=rec.key)
  depth = valid = pts = pts_valid = None
  if rec.depth is not None:
    depth, valid = transforms.depth_targets(cv.example, rec.depth_range)
  if cv.example.points is not None:
    pts = cv.example.points
    lo, hi = rec.depth_range
    pts_valid = (pts[:, 2] > lo) & (pts[:, 2] <= hi)
  return _Item(index, rec, cv, depth, valid, pts, pts_valid)


class _Scores:
  """Per-image metrics by (protocol, dataset), kept in record order."""

  def __init__(self):
    self.rows: dict[tuple[str, str], list[tuple[int, dict[str, float]]]] = {}
    self.domains: dict[str, str] = {}

  def add(self, protocol: str, item: _Item, values: dict[str, np.ndarray]) -> None:
    self.domains[item.record.dataset] = item.record.domain
    self.rows.setdefault((protocol, item.record.dataset), []).append(
        (item.index, {k: float(np.asarray(v).reshape(-1)[0]) for k, v in values.items()}))

  def table(self, protocol: str) -> dict[str, dict[str, float]]:
    out = {}
    for (p, dataset), rows in sorted(self.rows.items()):
      if p == protocol:
        rows = [r for _, r in sorted(rows, key=lambda x: x[0])]
        per = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        out[dataset] = {"images": len(rows), **metrics.average(per)}
    return out


def run(predictor: Predictor, data: Sequence, options: Options = Options(), out_dir=None,
        progress: bool = True) -> dict:
  """Scores the predictor on every record of the record sets `data` (each a glob, folder or list
  of shards); returns the results (see `markdown`). Bad records are skipped and counted per set
  (or raise, per options)."""
  options = options.validate()
  protocols = options.protocols if predictor.has_depth else tuple(p for p in options.protocols if p == "sparse")
  sources = _sources(data, options)
  total = sum(n for *_, n in sources)
  bar = report.Progress(total, every=max(1, predictor.settings.batch_size), batch_size=1, enabled=progress)
  scores, skipped, pending, pictures = _Scores(), {}, {}, []
  start, seen = time.time(), 0

  def flush(bucket):
    items = pending.pop(bucket)
    if predictor.has_depth:
      depth = predictor.depth_maps([it.canvas.example.rgb for it in items])
      for it, d in zip(items, depth):
        _score_depth(scores, it, d, protocols, options)
        if len(pictures) < options.pictures and it.depth is not None:
          pictures.append((it, it.canvas.crop(d)))
    for it in items:
      if not predictor.has_depth and "sparse" in protocols:
        _score_points(predictor, scores, it, options)
      for name in options.questions:
        _score_question(predictor, scores, it, questions.get(name), options)

  records = ((name, source[i]) for name, source, n in sources for i in range(n))
  for name, raw in records:
    seen += 1
    try:
      with located(raw.where):
        item = _item(predictor, seen - 1, raw.decode(), options)
    except RecordError as e:
      if options.on_bad_record == "raise":
        raise
      logging.warning("skipping a bad record: %s", e)
      skipped[name] = skipped.get(name, 0) + 1
      continue
    bucket = item.canvas.example.hw
    pending.setdefault(bucket, []).append(item)
    if len(pending[bucket]) == predictor.settings.batch_size:
      flush(bucket)
    bar.update(seen)
  for bucket in list(pending):
    flush(bucket)
  bar.update(total)

  results = {"images": seen - sum(skipped.values()), "skipped": skipped, "seconds": round(time.time() - start, 1),
             "options": dataclasses.asdict(options), "protocols": {}}
  for protocol in sorted({p for p, _ in scores.rows}):
    results["protocols"][protocol] = _summary(scores.table(protocol), scores.domains)
  if out_dir is not None:
    for k, (it, pred) in enumerate(pictures):
      exports.save_depth_figure(f"{out_dir}/picture_{k:03d}.png", it.canvas.crop(it.canvas.example.rgb), pred,
                                it.canvas.crop(it.depth), it.canvas.crop(it.valid), title=it.record.key)
  return results


def _constants(options: Options) -> list[tuple[str, float]]:
  """The constant baselines scored beside the model."""
  median = [] if options.train_median is None else [("train_median", options.train_median)]
  return [("always_2m", ALWAYS)] + median


def _metric_options(item: _Item, options: Options) -> dict:
  return dict(cap=item.record.depth_range, align=options.align, empty=options.empty)


def _score_depth(scores: _Scores, it: _Item, pred: np.ndarray, protocols, options: Options) -> None:
  """The model's map and the constant baselines, by each protocol the record allows."""
  kw = _metric_options(it, options)
  constants = _constants(options)
  if "dense" in protocols and it.depth is not None:
    values = metrics.dense(pred[None], it.depth[None], it.valid[None], **kw)
    values["flying_points"] = metrics.flying_points(pred[None], it.depth[None], it.valid[None])
    for name, c in constants:
      values[f"{name}/delta1"] = metrics.dense(np.full_like(pred, c)[None], it.depth[None], it.valid[None],
                                               **kw)["delta1"]
    scores.add("dense", it, values)
  if "sparse" in protocols and it.points is not None:
    values = metrics.sparse(pred[None], it.points[None], it.points_valid[None], **kw)
    for name, c in constants:
      values[f"{name}/delta1"] = metrics.sparse(np.full_like(pred, c)[None], it.points[None],
                                                it.points_valid[None], **kw)["delta1"]
    scores.add("sparse", it, values)


def _labelled(it: _Item) -> np.ndarray:
  """[N, 3] integer (col, row) and z of the labelled pixels that count (bucket coordinates)."""
  if it.points is not None:
    px = np.floor(it.points[:, :2] + 0.5)
    return np.concatenate([px, it.points[:, 2:]], axis=1)[it.points_valid]
  rows, cols = np.nonzero(it.valid)
  return np.stack([cols, rows, it.depth[rows, cols]], axis=-1)


def _score_points(predictor: Predictor, scores: _Scores, it: _Item, options: Options) -> None:
  """DepthLM's protocol: one question per labelled point; unparsed replies and points too near
  the border to mark score 0."""
  if it.points is None:
    return
  labelled = _labelled(it)
  answers = predictor.ask(it.canvas, labelled[:, None, :2].astype(np.int64), questions.get("depth"))
  values = _answer_metrics(answers.values, labelled[:, 2], it, options)
  for name, c in _constants(options):
    values[f"{name}/delta1"] = _answer_metrics(np.full(len(labelled), c), labelled[:, 2], it, options)["delta1"]
  scores.add("sparse", it, values)


def _score_question(predictor: Predictor, scores: _Scores, it: _Item, kind: questions.Kind, options: Options):
  """`questions_per_image` questions of one kind about labelled pixels (seeded per record)."""
  rng = np.random.default_rng([options.seed, it.index])
  labelled = _labelled(it)
  if not len(labelled):
    return
  picks, truth = [], []
  for _ in range(options.questions_per_image):
    try:
      xyz = questions.sample(kind, labelled, rng)
    except ValueError:
      break
    picks.append(xyz[:, :2].astype(np.int64))
    truth.append(kind.value(questions.camera_points(xyz, it.canvas.example.intrinsics)))
  if picks:
    answers = predictor.ask(it.canvas, np.stack(picks), kind)
    scores.add(f"question/{kind.name}", it, _answer_metrics(answers.values, np.array(truth), it, options))


def _answer_metrics(values: np.ndarray, truth: np.ndarray, it: _Item, options: Options) -> dict:
  """Per-image metrics of text answers: the error metrics over the replies that hold a number; the
  delta metrics over all questions, a reply without a number counting as wrong (the release)."""
  parsed = np.isfinite(values)
  out = metrics.values(np.where(parsed, values, 1.0)[None], truth[None], parsed[None], align=options.align,
                       empty=options.empty)
  share = parsed.mean() if len(parsed) else 0.0
  for k in metrics.DELTAS:
    out[k] = out[k] * share if parsed.any() else np.array([0.0 if options.empty == "zero" else np.nan])
  out["parsed"] = np.array([share])
  return out


def _summary(table: dict[str, dict[str, float]], domains: Mapping[str, str]) -> dict:
  """Per dataset, per domain (mean over its datasets) and the average over datasets."""
  mean = lambda rows: {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k != "images"}
  by_domain = {}
  for dataset, row in table.items():
    by_domain.setdefault(domains[dataset], []).append(row)
  return {"datasets": {d: {"domain": domains[d], **row} for d, row in table.items()},
          "domains": {d: {"datasets": len(rows), **mean(rows)} for d, rows in sorted(by_domain.items())},
          "average": {"datasets": len(table), **mean(list(table.values()))} if table else {}}


def markdown(results: dict, columns: Sequence[str] = SHOWN) -> str:
  """One table per protocol: datasets, domain means and the average, with the baselines' delta1."""
  lines = []
  for protocol, res in results["protocols"].items():
    extra = [k for k in ("flying_points", "parsed", "always_2m/delta1", "train_median/delta1")
             if any(k in r for r in res["datasets"].values())]
    cols = [c for c in columns if any(c in r for r in res["datasets"].values())] + extra
    lines += [f"### {protocol}", "", "| dataset | domain | images | " + " | ".join(cols) + " |",
              "|---|---|---|" + "---|" * len(cols)]
    fmt = lambda v: "-" if v is None or not np.isfinite(v) else f"{v:.3f}"
    for name, row in res["datasets"].items():
      lines.append(f"| {name} | {row['domain']} | {row['images']} | " + " | ".join(fmt(row.get(c)) for c in cols) + " |")
    for name, row in res["domains"].items():
      lines.append(f"| *{name}* | | {row['datasets']} sets | " + " | ".join(fmt(row.get(c)) for c in cols) + " |")
    if res["average"]:
      row = res["average"]
      lines.append(f"| **average** | | {row['datasets']} sets | " + " | ".join(fmt(row.get(c)) for c in cols) + " |")
    lines.append("")
  return "\n".join(lines)

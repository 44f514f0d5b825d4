"""Metric-depth metrics, per image then averaged over images (DepthVLM-Bench's protocol).

delta1 = fraction of labels with max(p/g, g/p) < 1.25 (the benchmark's metric), plus AbsRel and
RMSE, which neither release reports. Dense mode uses every valid pixel; sparse mode reads the
prediction at the labelled points' pixels (coordinates at the prediction's resolution, which the
pipeline guarantees: it rescales points from the depth map's own size).
"""

from __future__ import annotations

import numpy as np


def _per_image(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
  """pred, gt, mask: [B, N] -> per-image metrics [B] (NaN where an image has no label)."""
  pred = np.maximum(pred.astype(np.float64), 1e-6)
  gt = gt.astype(np.float64)
  n = mask.sum(axis=1)
  safe_gt = np.where(mask, gt, 1.0)
  ratio = np.maximum(pred / safe_gt, safe_gt / pred)
  with np.errstate(invalid="ignore", divide="ignore"):
    delta1 = np.where(mask, ratio < 1.25, False).sum(axis=1) / n
    abs_rel = np.where(mask, np.abs(pred - gt) / safe_gt, 0).sum(axis=1) / n
    rmse = np.sqrt(np.where(mask, (pred - gt) ** 2, 0).sum(axis=1) / n)
  return {"delta1": delta1, "abs_rel": abs_rel, "rmse": rmse}


def dense(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
  """Per-image metrics over valid pixels; pred, gt, valid: [B, H, W]."""
  b = pred.shape[0]
  return _per_image(pred.reshape(b, -1), gt.reshape(b, -1), valid.reshape(b, -1))


def sparse(pred: np.ndarray, points: np.ndarray, points_valid: np.ndarray) -> dict[str, np.ndarray]:
  """Per-image metrics at labelled points; pred [B, H, W], points [B, K, 3] (col, row, z)."""
  b, h, w = pred.shape
  cols = np.clip(np.floor(points[..., 0] + 0.5).astype(np.int64), 0, w - 1)
  rows = np.clip(np.floor(points[..., 1] + 0.5).astype(np.int64), 0, h - 1)
  at = pred[np.arange(b)[:, None], rows, cols]
  return _per_image(at, points[..., 2], points_valid)


def text_answers(pred: list, gt: np.ndarray, weight: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """DepthLM scoring, per image: one parsed answer each (None = parse failure, which scores
  delta1 0 as in the release, and has no AbsRel); NaN for skipped examples (weight 0)."""
  scored = np.ones(len(pred), bool) if weight is None else np.asarray(weight) > 0
  parsed = np.array([p is not None for p in pred])
  values = np.array([p if p is not None else 0.0 for p in pred], np.float64)
  per = _per_image(values[:, None], np.asarray(gt, np.float64)[:, None], (scored & parsed)[:, None])
  nan = np.full(len(pred), np.nan)
  return {"delta1": np.where(scored, np.where(parsed, per["delta1"], 0.0), nan),
          "abs_rel": np.where(scored & parsed, per["abs_rel"], nan), "parsed": np.where(scored, parsed, nan)}


def average(per_image: dict[str, np.ndarray], weight: np.ndarray | None = None) -> dict[str, float]:
  """Mean over images that have labels (and weight > 0, i.e. were not skipped)."""
  keep = np.isfinite(per_image["delta1"])
  if weight is not None:
    keep &= np.asarray(weight) > 0
  return {k: float(np.mean(v[keep])) if keep.any() else float("nan") for k, v in per_image.items()}

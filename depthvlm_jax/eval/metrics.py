"""Metric-depth metrics, per image then averaged over images (DepthVLM-Bench's protocol).

Keys of `values` ([B, N] labels), `dense` and `sparse` (per image, float64, over valid labels):
  delta1, delta2, delta3  share of labels with max(p/g, g/p) < 1.25, 1.25^2, 1.25^3 (strict: a
                          ratio of exactly 1.25 fails). delta1 is the benchmark's only metric.
  abs_rel  mean |p - g| / g        sq_rel  mean (p - g)^2 / g      rmse  sqrt mean (p - g)^2
  rmse_log sqrt mean d^2           log10   mean |log10 p - log10 g|
  silog    100 sqrt(mean d^2 - mean(d)^2), d = ln p - ln g: the KITTI benchmark / Eigen et al.
           scale-invariant error (lambda = 1, x100). Not the training loss of train/losses.py,
           which down-weights the mean term by 0.5 and adds an epsilon.
Dense mode uses every valid pixel; sparse mode reads the prediction at the labelled points'
pixels (coordinates at the prediction's resolution, which the pipeline guarantees: it rescales
points from the depth map's own size). The mask must mark positive, finite labels; predictions
that are <= 0 or not finite count as 1e-6 m (a wrong answer, never a skipped one).

Options (keyword-only, on values, dense and sparse):
  cap=(lo, hi)    a dataset's depth range: labels outside (lo, hi] are not evaluated and
                  predictions are clipped to [lo, hi] (after alignment), the usual protocol.
  align="median"  per-image median scaling, p *= median(g) / median(p) over the evaluated
                  labels: scores the shape of the map without its metric scale (None or
                  "none": off).
  empty="nan"     an image with no evaluated label is NaN in every key, so `average` leaves it
                  out. empty="zero" is the release's protocol: its delta metrics are 0 and it
                  counts in their mean; the error metrics have no value and stay NaN.

`flying_points` scores depth edges: the share of pixels next to a ground-truth discontinuity
whose prediction floats between the near and the far surface (DepthLM's "no flying points").
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

MIN_DEPTH = 1e-6  # what a prediction <= 0 or non-finite counts as
DELTAS = {"delta1": 1.25, "delta2": 1.25 ** 2, "delta3": 1.25 ** 3}
ALIGNS = (None, "none", "median")


def _positive(pred: np.ndarray) -> np.ndarray:
  pred = np.asarray(pred, np.float64)
  return np.where(np.isfinite(pred) & (pred > MIN_DEPTH), pred, MIN_DEPTH)


def _median_scale(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """pred * median(gt) / median(pred) per image over mask ([B, ...]); unchanged if mask is empty."""
  b = pred.shape[0]
  with warnings.catch_warnings():  # an image without labels has an all-NaN median
    warnings.simplefilter("ignore", RuntimeWarning)
    scale = (np.nanmedian(np.where(mask, gt, np.nan).reshape(b, -1), axis=1)
             / np.nanmedian(np.where(mask, pred, np.nan).reshape(b, -1), axis=1))
  scale = np.where(np.isfinite(scale), scale, 1.0)
  return pred * scale.reshape((b,) + (1,) * (pred.ndim - 1))


def values(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, *, cap: tuple[float, float] | None = None,
           align: str | None = None, empty: str = "nan") -> dict[str, np.ndarray]:
  """pred, gt, mask: [B, N] -> per-image metrics [B] (see the module docstring for the options)."""
  if align not in ALIGNS:
    raise ValueError(f"align={align!r}: None, 'none' or 'median'")
  if empty not in ("nan", "zero"):
    raise ValueError(f"empty={empty!r}: 'nan' or 'zero'")
  pred, gt, mask = _positive(pred), np.asarray(gt, np.float64), np.asarray(mask, bool)
  if cap is not None:
    lo, hi = cap
    mask = mask & (gt > lo) & (gt <= hi)
  if align == "median":
    pred = _median_scale(pred, gt, mask)
  if cap is not None:
    pred = np.clip(pred, lo, hi)
  p, g = np.where(mask, pred, 1.0), np.where(mask, gt, 1.0)  # off the mask: finite logs, no division by 0
  n = mask.sum(axis=1)
  d = np.log(p) - np.log(g)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = lambda x: np.where(mask, x, 0.0).sum(axis=1) / n
    ratio = np.maximum(p / g, g / p)
    out = {k: mean(ratio < t) for k, t in DELTAS.items()}
    if empty == "zero":
      out = {k: np.where(n > 0, v, 0.0) for k, v in out.items()}
    out["abs_rel"] = mean(np.abs(p - g) / g)
    out["sq_rel"] = mean((p - g) ** 2 / g)
    out["rmse"] = np.sqrt(mean((p - g) ** 2))
    out["rmse_log"] = np.sqrt(mean(d ** 2))
    out["log10"] = mean(np.abs(np.log10(p) - np.log10(g)))
    out["silog"] = 100.0 * np.sqrt(np.maximum(mean(d ** 2) - mean(d) ** 2, 0.0))  # max: rounding below 0
  return out


def dense(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, *, cap: tuple[float, float] | None = None,
          align: str | None = None, empty: str = "nan") -> dict[str, np.ndarray]:
  """Per-image metrics over valid pixels; pred, gt, valid: [B, H, W]."""
  b = pred.shape[0]
  return values(pred.reshape(b, -1), gt.reshape(b, -1), valid.reshape(b, -1), cap=cap, align=align, empty=empty)


def sparse(pred: np.ndarray, points: np.ndarray, points_valid: np.ndarray, *,
           cap: tuple[float, float] | None = None, align: str | None = None,
           empty: str = "nan") -> dict[str, np.ndarray]:
  """Per-image metrics at labelled points; pred [B, H, W], points [B, K, 3] (col, row, z)."""
  b, h, w = pred.shape
  cols = np.clip(np.floor(points[..., 0] + 0.5).astype(np.int64), 0, w - 1)
  rows = np.clip(np.floor(points[..., 1] + 0.5).astype(np.int64), 0, h - 1)
  at = pred[np.arange(b)[:, None], rows, cols]
  return values(at, points[..., 2], points_valid, cap=cap, align=align, empty=empty)


def text_answers(pred: list, gt: np.ndarray, weight: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """DepthLM scoring, per image: one parsed answer each (None = parse failure, which scores
  delta1 0 as in the release, and has no AbsRel); NaN for skipped examples (weight 0)."""
  scored = np.ones(len(pred), bool) if weight is None else np.asarray(weight) > 0
  parsed = np.array([p is not None for p in pred])
  answers = np.array([p if p is not None else 0.0 for p in pred], np.float64)
  per = values(answers[:, None], np.asarray(gt, np.float64)[:, None], (scored & parsed)[:, None])
  nan = np.full(len(pred), np.nan)
  return {"delta1": np.where(scored, np.where(parsed, per["delta1"], 0.0), nan),
          "abs_rel": np.where(scored & parsed, per["abs_rel"], nan), "parsed": np.where(scored, parsed, nan)}


def flying_points(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, *, radius: int = 1, jump: float = 1.25,
                  tol: float = 0.05, align: str | None = None) -> np.ndarray:
  """Share of depth-edge pixels whose prediction floats between the two surfaces; [B] (NaN: no edge).

  pred, gt, valid: [B, H, W]. Around each valid pixel, the (2 radius + 1)^2 window's valid
  ground truth has a near depth lo and a far depth hi; the pixel is on an edge when hi > jump * lo,
  and it is a flying point when lo (1 + tol) < p < hi / (1 + tol), on neither surface, and p is
  also more than tol off its own label g (else a correct pixel of a third, middle surface where
  three meet would count: a perfect map scores 0). A sharp map that puts the edge a pixel off is
  not flying (each pixel is near or far); a map that blurs the step is.
  Defaults: radius 1, the smallest window that straddles a step. jump 1.25, the delta1 threshold
  (a prediction on either surface fails delta1 for the other) and the top of Depth Pro's
  neighbour-ratio range for occluding contours (1.05-1.25); it keeps smooth slopes out: a ground
  plane seen from 1.5 m at focal 1000 px changes depth by 25% over a window's two rows only
  beyond 150 m, past every dataset's cap. tol 0.05 counts a prediction within 5% of a surface as
  on it (label noise, a slanted surface) and still leaves over half of the log-depth gap of the
  weakest edge as "floating".
  The depth is absolute, so a global scale error above tol can look like flying points:
  align="median" scales each prediction to the ground truth's median first.
  """
  if align not in ALIGNS:
    raise ValueError(f"align={align!r}: None, 'none' or 'median'")
  pred, gt, valid = _positive(pred), np.asarray(gt, np.float64), np.asarray(valid, bool)
  if align == "median":
    pred = _median_scale(pred, gt, valid)
  size = (1, 2 * radius + 1, 2 * radius + 1)  # per image: no window across the batch axis
  hi = ndimage.maximum_filter(np.where(valid, gt, -np.inf), size=size, mode="constant", cval=-np.inf)
  lo = ndimage.minimum_filter(np.where(valid, gt, np.inf), size=size, mode="constant", cval=np.inf)
  edge = valid & (hi > jump * lo)
  off_label = (pred > gt * (1 + tol)) | (pred < gt / (1 + tol))
  flying = edge & off_label & (pred > lo * (1 + tol)) & (pred < hi / (1 + tol))
  n = edge.sum(axis=(1, 2))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(n > 0, flying.sum(axis=(1, 2)) / n, np.nan)


def average(per_image: dict[str, np.ndarray], weight: np.ndarray | None = None) -> dict[str, float]:
  """Mean of each metric over the images where it has a value (not NaN: an image without labels,
  or an error metric of an image the empty="zero" protocol counts) and weight > 0 (not skipped)."""
  keep = None if weight is None else np.asarray(weight) > 0
  out = {}
  for k, v in per_image.items():
    v = np.asarray(v, np.float64)
    ok = ~np.isnan(v) if keep is None else keep & ~np.isnan(v)
    out[k] = float(np.mean(v[ok])) if ok.any() else float("nan")
  return out


def summarize(parts: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """`average` over the images of several batches' per-image metrics (the keys of the first)."""
  return average({k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]})

"""Loss terms: SILog for depth (dense maps or sparse labelled pixels) and masked LM cross-entropy.

Every term is a pure function of arrays that returns (value, count): the mean over what counts
and how many things counted, so the step can log each part and skip a batch where nothing
counted without a NaN. Examples with weight 0 (records the pipeline skipped) never count.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from depthvlm_jax.data.text import IGNORE_ID
from depthvlm_jax.model.resize import resize_bilinear_align_corners

SILOG_VARIANCE_FOCUS = 0.5  # lambda in sqrt(mean(d^2) - lambda * mean(d)^2), the releases' value
SILOG_EPS = 1e-8


def _log_stats(pred: jax.Array, gt: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per image: (sum d, sum d^2, count) of d = log(pred) - log(gt) over valid, positive pairs.
  pred, gt, valid: [B, N]. A NaN target at a valid pixel is kept, so that it makes the loss NaN
  and the step skips (and counts) the batch instead of training on corrupt labels unnoticed."""
  ok = valid & ~(gt <= 0) & (pred > 0)
  d = jnp.where(ok, jnp.log(jnp.where(ok, pred, 1.0)) - jnp.log(jnp.where(ok, gt, 1.0)), 0.0)
  return d.sum(-1), (d * d).sum(-1), ok.sum(-1)


def _silog_from_stats(s1, s2, n, weight):
  """Mean over images that count of sqrt(mean(d^2) - lambda mean(d)^2 + eps); (0, 0) if none."""
  counts = (n > 0) & (weight > 0)
  nn = jnp.maximum(n, 1).astype(jnp.float32)
  mean_d, mean_d2 = s1 / nn, s2 / nn
  per_image = jnp.sqrt(jnp.maximum(mean_d2 - SILOG_VARIANCE_FOCUS * mean_d * mean_d, 0.0) + SILOG_EPS)
  images = counts.sum()
  loss = jnp.where(counts, per_image, 0.0).sum() / jnp.maximum(images, 1)
  return loss, images


def silog(pred: jax.Array, gt: jax.Array, valid: jax.Array, weight: Optional[jax.Array] = None):
  """Dense SILog. pred [B, h, w] metres; gt, valid [B, H, W]; the prediction is resized to the
  ground truth's size (bilinear, align_corners=True) when they differ. Returns (loss, images)."""
  b = pred.shape[0]
  if pred.shape[1:] != gt.shape[1:]:
    pred = resize_bilinear_align_corners(pred[..., None], gt.shape[1:])[..., 0]
  weight = jnp.ones((b,), jnp.float32) if weight is None else weight
  return _silog_from_stats(*_log_stats(pred.reshape(b, -1), gt.reshape(b, -1), valid.reshape(b, -1)), weight)


def sample_at_points(pred: jax.Array, points: jax.Array) -> jax.Array:
  """pred [B, H, W] read at the pixels holding points [B, K, 3] (col, row, z): [B, K]."""
  _, h, w = pred.shape
  cols = jnp.clip(jnp.floor(points[..., 0] + 0.5).astype(jnp.int32), 0, w - 1)
  rows = jnp.clip(jnp.floor(points[..., 1] + 0.5).astype(jnp.int32), 0, h - 1)
  return jax.vmap(lambda p, r, c: p[r, c])(pred, rows, cols)


def depth_loss(pred: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
  """SILog per image over its dense valid pixels, or, for an image with no dense label (LiDAR,
  DepthLM-style records), over its labelled points; then the mean over images that count.
  The prediction must be at the batch's image size (the pipeline's targets are)."""
  b = pred.shape[0]
  dense = _log_stats(pred.reshape(b, -1), batch["depth"].reshape(b, -1), batch["depth_valid"].reshape(b, -1))
  sparse = _log_stats(sample_at_points(pred, batch["points"]), batch["points"][..., 2], batch["points_valid"])
  use_dense = dense[2] > 0
  stats = [jnp.where(use_dense, d, s) for d, s in zip(dense, sparse)]
  return _silog_from_stats(*stats, batch["weight"])


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  weight: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mean next-token cross-entropy over labelled positions (labels already shifted, IGNORE_ID
  elsewhere), in float32. Returns (ce, z, tokens) with z = mean(logsumexp^2) over the same
  positions: PaLM's z-loss term, which keeps the softmax normaliser near 1."""
  mask = labels != IGNORE_ID
  if weight is not None:
    mask &= (weight > 0)[:, None]
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  target = jnp.take_along_axis(logits, jnp.where(mask, labels, 0)[..., None], axis=-1)[..., 0]
  tokens = mask.sum()
  denom = jnp.maximum(tokens, 1)
  ce = jnp.where(mask, lse - target, 0.0).sum() / denom
  z = jnp.where(mask, lse * lse, 0.0).sum() / denom
  return ce, z, tokens

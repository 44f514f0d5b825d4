"""SILog and the masked cross-entropy equal plain numpy references (1e-6)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from depthvlm_jax.data.text import IGNORE_ID
from depthvlm_jax.train import losses


def silog_reference(pred, gt, valid, weight=None):
  """The release's SILog in numpy, one image at a time: images with no valid pixel are left out."""
  per = []
  for b in range(len(pred)):
    p = pred[b]
    if p.shape != gt[b].shape:  # align-corners bilinear, as torch's F.interpolate
      t = torch.nn.functional.interpolate(torch.tensor(p, dtype=torch.float64)[None, None], size=gt[b].shape,
                                          mode="bilinear", align_corners=True)
      p = t[0, 0].numpy()
    m = valid[b] & (gt[b] > 0) & (p > 0)
    if not m.any() or (weight is not None and weight[b] == 0):
      continue
    d = np.log(p[m].astype(np.float64)) - np.log(gt[b][m].astype(np.float64))
    per.append(np.sqrt(np.mean(d ** 2) - 0.5 * np.mean(d) ** 2 + 1e-8))
  return (float(np.mean(per)) if per else 0.0), len(per)


def cases():
  rng = np.random.default_rng(0)
  gt = rng.uniform(0.5, 20, (3, 6, 8)).astype(np.float32)
  pred = (gt * rng.lognormal(0.1, 0.3, gt.shape)).astype(np.float32)
  all_valid = np.ones_like(gt, bool)
  random_valid = rng.random(gt.shape) > 0.4
  one_empty = random_valid.copy()
  one_empty[1] = False
  some_bad_pred = pred.copy()
  some_bad_pred[0, :2] = -1.0  # a non-positive prediction is left out, not a NaN
  return {
      "all valid": (pred, gt, all_valid),
      "random mask": (pred, gt, random_valid),
      "one image empty": (pred, gt, one_empty),
      "none valid": (pred, gt, np.zeros_like(all_valid)),
      "non-positive predictions": (some_bad_pred, gt, all_valid),
      "exact up to scale": (gt * 3.0, gt, all_valid),  # scale-invariant part: sqrt(0.5 * log(3)^2)
  }


@pytest.mark.parametrize("name", list(cases()))
def test_silog_equals_numpy(name):
  pred, gt, valid = cases()[name]
  loss, images = losses.silog(jnp.asarray(pred), jnp.asarray(gt), jnp.asarray(valid))
  ref, n = silog_reference(pred, gt, valid)
  assert int(images) == n
  np.testing.assert_allclose(float(loss), ref, rtol=1e-6, atol=1e-6)
  assert np.isfinite(float(loss))


def test_silog_hand_values_and_weights():
  gt = np.full((2, 2, 2), 2.0, np.float32)
  pred = np.stack([gt[0] * 3.0, gt[1]])
  loss, images = losses.silog(jnp.asarray(pred), jnp.asarray(gt), jnp.ones_like(gt, bool))
  expected = (np.sqrt(0.5 * np.log(3.0) ** 2 + 1e-8) + np.sqrt(1e-8)) / 2
  assert int(images) == 2 and float(loss) == pytest.approx(expected, rel=1e-6)
  # A skipped example (weight 0) does not count.
  loss, images = losses.silog(jnp.asarray(pred), jnp.asarray(gt), jnp.ones_like(gt, bool), jnp.array([0.0, 1.0]))
  assert int(images) == 1 and float(loss) == pytest.approx(np.sqrt(1e-8), rel=1e-6)


def test_silog_resizes_the_prediction_to_the_ground_truth_size():
  rng = np.random.default_rng(1)
  gt = rng.uniform(1, 5, (2, 9, 13)).astype(np.float32)
  pred = rng.uniform(1, 5, (2, 5, 7)).astype(np.float32)
  valid = rng.random(gt.shape) > 0.3
  loss, _ = losses.silog(jnp.asarray(pred), jnp.asarray(gt), jnp.asarray(valid))
  np.testing.assert_allclose(float(loss), silog_reference(pred, gt, valid)[0], rtol=1e-6)


def test_depth_loss_uses_points_for_images_without_a_dense_label():
  rng = np.random.default_rng(2)
  gt = rng.uniform(1, 5, (2, 6, 8)).astype(np.float32)
  pred = (gt * rng.lognormal(0, 0.2, gt.shape)).astype(np.float32)
  valid = np.ones_like(gt, bool)
  valid[1] = False  # image 1: sparse labels only
  cols, rows = rng.integers(0, 8, 5), rng.integers(0, 6, 5)
  points = np.zeros((2, 5, 3), np.float32)
  points[1] = np.stack([cols + 0.3, rows - 0.2, gt[1, rows, cols]], 1)
  points_valid = np.array([[False] * 5, [True] * 5])
  batch = dict(depth=jnp.asarray(gt), depth_valid=jnp.asarray(valid), points=jnp.asarray(points),
               points_valid=jnp.asarray(points_valid), weight=jnp.ones(2))
  loss, images = losses.depth_loss(jnp.asarray(pred), batch)
  dense, _ = silog_reference(pred[:1], gt[:1], valid[:1])
  d = np.log(pred[1, rows, cols].astype(np.float64)) - np.log(gt[1, rows, cols].astype(np.float64))
  sparse = np.sqrt(np.mean(d ** 2) - 0.5 * np.mean(d) ** 2 + 1e-8)
  assert int(images) == 2
  np.testing.assert_allclose(float(loss), (dense + sparse) / 2, rtol=1e-6)


def test_cross_entropy_equals_numpy_over_answer_tokens():
  rng = np.random.default_rng(3)
  logits = rng.normal(0, 3, (3, 7, 11)).astype(np.float32)
  labels = rng.integers(0, 11, (3, 7))
  labels[rng.random((3, 7)) < 0.5] = IGNORE_ID
  labels[2] = IGNORE_ID  # a row with no answer token
  weight = np.array([1.0, 0.0, 1.0])  # row 1 was a skipped record
  ce, z, tokens = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weight))
  lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  mask = (labels != IGNORE_ID) & (weight[:, None] > 0)
  nll = lse - np.take_along_axis(logits, np.where(mask, labels, 0)[..., None], -1)[..., 0]
  assert int(tokens) == mask.sum() > 0
  np.testing.assert_allclose(float(ce), nll[mask].mean(), rtol=1e-6)
  np.testing.assert_allclose(float(z), (lse[mask] ** 2).mean(), rtol=1e-6)
  ce, z, tokens = losses.cross_entropy(jnp.asarray(logits), jnp.full((3, 7), IGNORE_ID))
  assert int(tokens) == 0 and float(ce) == 0.0 and float(z) == 0.0  # nothing counted, no NaN

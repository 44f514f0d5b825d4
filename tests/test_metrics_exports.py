"""Depth metrics on known answers; point clouds and PLY files."""

import numpy as np
import pytest

from depthvlm_jax.eval import metrics
from depthvlm_jax.infer import exports


def test_dense_metrics_known_answers():
  gt = np.full((2, 4, 5), 2.0, np.float32)
  valid = np.ones_like(gt, bool)
  pred = gt.copy()
  pred[1] *= 1.3  # every pixel of image 1 is off by 30%
  per = metrics.dense(pred, gt, valid)
  np.testing.assert_allclose(per["delta1"], [1.0, 0.0])
  np.testing.assert_allclose(per["abs_rel"], [0.0, 0.3], atol=1e-6)
  np.testing.assert_allclose(per["rmse"], [0.0, 0.6], atol=1e-6)
  avg = metrics.average(per)
  assert avg["delta1"] == pytest.approx(0.5)


def test_delta1_is_two_sided_and_rmse_is_not_mae():
  """Under-prediction must fail delta1 like over-prediction (max(p/g, g/p)), and RMSE must weigh
  large errors more than MAE: one image per case, values worked out by hand."""
  gt = np.full((3, 1, 4), 2.0, np.float32)
  pred = np.array([[[1.0, 1.8, 2.4, 3.0]],  # ratios 2, 1.11, 1.2, 1.5 (two under, two over)
                   [[2 / 1.3] * 4],  # all 30% under: one-sided p/g < 1.25 would pass them
                   [[2.6] * 4]], np.float32)  # all 30% over
  per = metrics.dense(pred, gt, np.ones_like(gt, bool))
  np.testing.assert_allclose(per["delta1"], [0.5, 0.0, 0.0])
  np.testing.assert_allclose(per["abs_rel"], [(1 + 0.2 + 0.4 + 1) / 4 / 2, 1 - 1 / 1.3, 0.3], rtol=1e-6)
  # RMSE sqrt((1 + 0.04 + 0.16 + 1) / 4) = 0.742, where MAE would be 0.65.
  np.testing.assert_allclose(per["rmse"], [np.sqrt(0.55), 2 - 2 / 1.3, 0.6], rtol=1e-6)


def reference_metrics(pred, gt, valid):
  """Per-image delta1 / AbsRel / RMSE written plainly, one image at a time."""
  out = {"delta1": [], "abs_rel": [], "rmse": []}
  for p, g, v in zip(pred, gt, valid):
    p, g = p[v].astype(np.float64), g[v].astype(np.float64)
    out["delta1"].append(np.mean(np.maximum(p / g, g / p) < 1.25))
    out["abs_rel"].append(np.mean(np.abs(p - g) / g))
    out["rmse"].append(np.sqrt(np.mean((p - g) ** 2)))
  return {k: np.array(v) for k, v in out.items()}


def test_dense_and_sparse_metrics_equal_a_plain_reference_on_mixed_errors():
  """Log-normal errors both ways (about half the pixels outside 1.25x) with invalid pixels."""
  rng = np.random.default_rng(0)
  gt = rng.uniform(0.5, 20.0, (4, 12, 16)).astype(np.float32)
  pred = (gt * np.exp(rng.normal(0, 0.3, gt.shape))).astype(np.float32)
  valid = rng.uniform(size=gt.shape) < 0.8
  want = reference_metrics(pred, gt, valid)
  assert 0.3 < want["delta1"].mean() < 0.7
  per = metrics.dense(pred, gt, valid)
  for k in want:
    np.testing.assert_allclose(per[k], want[k], rtol=1e-6, err_msg=k)
  avg = metrics.average(per)
  assert avg["rmse"] == pytest.approx(want["rmse"].mean(), rel=1e-6)
  # Sparse: the labels are the pixels' own gt values, read at pixel centres.
  rows, cols = np.nonzero(valid[0])
  points = np.stack([cols, rows, gt[0, rows, cols]], -1)[None].astype(np.float32)
  sp = metrics.sparse(pred[:1], points, np.ones(points.shape[:2], bool))
  for k in want:
    np.testing.assert_allclose(sp[k], want[k][:1], rtol=1e-6, err_msg=k)


def test_sparse_reads_prediction_at_the_point_pixel_and_skips_unlabelled_images():
  pred = np.ones((2, 6, 8), np.float32)
  pred[0, 2, 5] = 4.0
  points = np.zeros((2, 3, 3), np.float32)
  points[0, 0] = (5.2, 1.6, 4.0)  # pixel (col 5, row 2)
  points[0, 1] = (0.0, 0.0, 1.1)
  pv = np.array([[True, True, False], [False, False, False]])
  per = metrics.sparse(pred, points, pv)
  assert per["delta1"][0] == 1.0 and np.isnan(per["delta1"][1])
  assert metrics.average(per)["delta1"] == 1.0
  assert np.isnan(metrics.average(per, weight=np.array([0.0, 1.0]))["delta1"])


def test_point_cloud_back_projects_and_ply_round_trips(tmp_path):
  depth = np.array([[2.0, 0.0], [4.0, 1.0]], np.float32)
  pts, cols = exports.point_cloud(depth, (2.0, 2.0, 0.5, 0.5), np.arange(12, dtype=np.uint8).reshape(2, 2, 3))
  np.testing.assert_allclose(pts, [[-0.5, -0.5, 2.0], [-1.0, 1.0, 4.0], [0.25, 0.25, 1.0]])
  exports.save_ply(str(tmp_path / "a.ply"), pts, cols)
  raw = (tmp_path / "a.ply").read_bytes()
  header, body = raw.split(b"end_header\n")
  assert b"element vertex 3" in header
  rec = np.frombuffer(body, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
  np.testing.assert_array_equal(rec["z"], pts[:, 2])
  np.testing.assert_array_equal(rec["r"], cols[:, 0])


def test_colorize_marks_invalid_black():
  rgb = exports.colorize(np.array([[1.0, 2.0], [0.0, 3.0]], np.float32))
  assert rgb.shape == (2, 2, 3) and (rgb[1, 0] == 0).all() and not (rgb[0, 0] == rgb[1, 1]).all()


def test_text_answers_score_parse_failures_as_zero():
  per = metrics.text_answers([2.0, None, 3.0, 1.0, 7.0], np.array([2.1, 1.0, 2.0, 1.0, 7.0]),
                             np.array([1.0, 1.0, 1.0, 1.0, 0.0]))  # the last was a skipped record
  scores = metrics.average(per)
  assert scores["delta1"] == pytest.approx(0.5)  # 2.0~2.1 and 1.0 correct; 3.0 vs 2.0 and the failure not
  assert scores["parsed"] == pytest.approx(0.75) and int(np.isfinite(per["delta1"]).sum()) == 4
  assert np.isnan(per["abs_rel"][1]) and per["abs_rel"][2] == pytest.approx(0.5)

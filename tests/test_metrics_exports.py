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
  scores = metrics.text_answers([2.0, None, 3.0, 1.0], np.array([2.1, 1.0, 2.0, 1.0]))
  assert scores["delta1"] == pytest.approx(0.5)  # 2.0~2.1 and 1.0 correct; 3.0 vs 2.0 and the failure not
  assert scores["parsed"] == pytest.approx(0.75) and scores["count"] == 4

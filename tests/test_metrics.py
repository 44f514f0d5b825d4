"""Depth metrics against plain one-image-at-a-time references and values worked out by hand."""

import numpy as np
import pytest

from depthvlm_jax.eval import metrics

KEYS = ("delta1", "delta2", "delta3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")
DELTA_KEYS = KEYS[:3]


def reference(pred, gt, valid, cap=None, align=None, empty="nan"):
  """Every metric written plainly, one image at a time, in float64."""
  out = {k: [] for k in KEYS}
  for p, g, v in zip(pred, gt, valid):
    p, g, v = p.astype(np.float64).ravel(), g.astype(np.float64).ravel(), v.ravel().copy()
    p[~np.isfinite(p) | (p <= 1e-6)] = 1e-6
    if cap is not None:
      v &= (g > cap[0]) & (g <= cap[1])
    p, g = p[v], g[v]
    if len(g) == 0:
      for k in KEYS:
        out[k].append(0.0 if empty == "zero" and k in DELTA_KEYS else np.nan)
      continue
    if align == "median":
      p = p * np.median(g) / np.median(p)
    if cap is not None:
      p = np.clip(p, cap[0], cap[1])
    ratio = np.maximum(p / g, g / p)
    d = np.log(p) - np.log(g)
    out["delta1"].append(np.mean(ratio < 1.25))
    out["delta2"].append(np.mean(ratio < 1.25 ** 2))
    out["delta3"].append(np.mean(ratio < 1.25 ** 3))
    out["abs_rel"].append(np.mean(np.abs(p - g) / g))
    out["sq_rel"].append(np.mean((p - g) ** 2 / g))
    out["rmse"].append(np.sqrt(np.mean((p - g) ** 2)))
    out["rmse_log"].append(np.sqrt(np.mean(d ** 2)))
    out["log10"].append(np.mean(np.abs(np.log10(p) - np.log10(g))))
    out["silog"].append(100 * np.sqrt(np.mean(d ** 2) - np.mean(d) ** 2))
  return {k: np.array(v) for k, v in out.items()}


def random_batch(seed=0):
  """Log-normal errors both ways, invalid pixels, an image with no label, bad predictions."""
  rng = np.random.default_rng(seed)
  gt = np.exp(rng.uniform(np.log(0.3), np.log(60.0), (5, 10, 12))).astype(np.float32)
  pred = (gt * np.exp(rng.normal(0.1, 0.4, gt.shape))).astype(np.float32)
  pred[0, 0, :4] = (0.0, -1.0, np.nan, np.inf)  # count as 1e-6 m
  valid = rng.uniform(size=gt.shape) < 0.8
  valid[3] = False
  return pred, gt, valid


OPTIONS = [{}, {"cap": (0.5, 40.0)}, {"align": "median"}, {"cap": (0.5, 40.0), "align": "median"},
           {"empty": "zero"}, {"cap": (0.5, 40.0), "align": "median", "empty": "zero"}]


def option_id(options):
  return "-".join(f"{k}={v}".replace(" ", "") for k, v in options.items()) or "default"


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
def test_dense_and_sparse_equal_the_plain_reference(options):
  pred, gt, valid = random_batch()
  want = reference(pred, gt, valid, **options)
  assert 0.3 < np.nanmean(want["delta1"]) < 0.8 and np.nanmean(want["delta3"]) < 0.99
  per = metrics.dense(pred, gt, valid, **options)
  assert set(per) == set(KEYS)
  for k in KEYS:
    np.testing.assert_allclose(per[k], want[k], rtol=1e-6, err_msg=k)
    assert per[k].dtype == np.float64
  # Sparse: every pixel is a point labelled with its own gt; invalid pixels are unlabelled points.
  b, h, w = gt.shape
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  points = np.stack([np.broadcast_to(cols, gt.shape), np.broadcast_to(rows, gt.shape), gt], -1).reshape(b, -1, 3)
  sp = metrics.sparse(pred, points, valid.reshape(b, -1), **options)
  flat = metrics.values(pred.reshape(b, -1), gt.reshape(b, -1), valid.reshape(b, -1), **options)
  for k in KEYS:
    np.testing.assert_allclose(sp[k], want[k], rtol=1e-6, err_msg=k)
    np.testing.assert_array_equal(flat[k], per[k], err_msg=k)


def test_all_valid_image_worked_by_hand():
  """Ratios 1, 1.25 (over), 1.25 (under), 2: an exact 1.25 is not within 1.25."""
  gt = np.full((1, 1, 4), 2.0)
  pred = np.array([[[2.0, 2.5, 1.6, 4.0]]])
  per = metrics.dense(pred, gt, np.ones_like(gt, bool))
  d = np.array([0.0, np.log(1.25), -np.log(1.25), np.log(2.0)])
  want = {"delta1": 0.25, "delta2": 0.75, "delta3": 0.75, "abs_rel": (0 + 0.5 + 0.4 + 2.0) / 2 / 4,
          "sq_rel": (0 + 0.25 + 0.16 + 4.0) / 2 / 4, "rmse": np.sqrt((0 + 0.25 + 0.16 + 4.0) / 4),
          "rmse_log": np.sqrt(np.mean(d ** 2)), "log10": (2 * np.log10(1.25) + np.log10(2.0)) / 4,
          "silog": 100 * np.sqrt(np.mean(d ** 2) - (np.log(2.0) / 4) ** 2)}
  for k, v in want.items():
    np.testing.assert_allclose(per[k], [v], rtol=1e-12, err_msg=k)


def test_delta_thresholds_are_strict_both_ways():
  """Ratios of exactly 1.25, 1.25^2, 1.25^3 (exact in binary), over and under, fail their delta."""
  gt = np.array([[[2.0, 2.5, 2.0, 3.125, 2.0, 3.90625]]])
  pred = np.array([[[2.5, 2.0, 3.125, 2.0, 3.90625, 2.0]]])
  per = metrics.dense(pred, gt, np.ones_like(gt, bool))
  np.testing.assert_array_equal([per["delta1"], per["delta2"], per["delta3"]], [[0.0], [2 / 6], [4 / 6]])
  # and a hair inside each threshold passes
  per = metrics.dense(pred * np.array([0.999, 1.001] * 3), gt, np.ones_like(gt, bool))
  np.testing.assert_allclose([per["delta1"], per["delta2"], per["delta3"]], [[2 / 6], [4 / 6], [1.0]])


def test_image_without_labels_nan_or_zero_protocol():
  gt = np.full((2, 2, 2), 3.0)
  pred = gt * 1.1
  valid = np.zeros_like(gt, bool)
  valid[0] = True
  nan = metrics.dense(pred, gt, valid)
  for k in KEYS:
    assert np.isfinite(nan[k][0]) and np.isnan(nan[k][1]), k
  assert metrics.average(nan)["delta1"] == 1.0
  zero = metrics.dense(pred, gt, valid, empty="zero")
  for k in KEYS:
    assert zero[k][1] == 0.0 if k in DELTA_KEYS else np.isnan(zero[k][1]), k
  avg = metrics.average(zero)
  assert avg["delta1"] == 0.5 and avg["delta3"] == 0.5  # the empty image counts as 0
  assert avg["abs_rel"] == pytest.approx(0.1) and avg["rmse"] == pytest.approx(0.3)  # and has no error
  with pytest.raises(ValueError):
    metrics.dense(pred, gt, valid, empty="skip")


def test_cap_excludes_labels_outside_lo_hi_and_clips_predictions():
  """Cap (1, 80]: 0.5, 1.0 (= lo) and 100 are not evaluated; 80 (= hi) is. The 200 m prediction
  at 80 m clips to 80 (exact); the 0.1 m one at 5 m clips to 1 (ratio 5, AbsRel 0.8)."""
  gt = np.array([[[0.5, 1.0, 5.0, 80.0, 100.0]]])
  pred = np.array([[[0.5, 1.0, 0.1, 200.0, 100.0]]])
  valid = np.ones_like(gt, bool)
  per = metrics.dense(pred, gt, valid, cap=(1.0, 80.0))
  np.testing.assert_allclose([per["delta1"], per["abs_rel"], per["rmse"]], [[0.5], [0.4], [np.sqrt(8.0)]])
  raw = metrics.dense(pred, gt, valid)
  np.testing.assert_allclose([raw["delta1"], raw["abs_rel"]], [[0.6], [(0.98 + 1.5) / 5]])
  assert np.isnan(metrics.dense(pred, gt, valid, cap=(150.0, 200.0))["delta1"][0])


def test_median_alignment_removes_scale():
  rng = np.random.default_rng(1)
  gt = rng.uniform(1.0, 10.0, (2, 6, 7))
  valid = rng.uniform(size=gt.shape) < 0.7
  pred = 3.0 * gt
  pred[~valid] = 1000.0  # unlabelled pixels must not move the median
  assert metrics.dense(pred, gt, valid)["delta1"].tolist() == [0.0, 0.0]
  per = metrics.dense(pred, gt, valid, align="median")
  np.testing.assert_allclose(per["delta1"], [1.0, 1.0])
  np.testing.assert_allclose(per["abs_rel"], [0.0, 0.0], atol=1e-12)
  for off in (None, "none"):
    assert metrics.dense(pred, gt, valid, align=off)["delta1"].tolist() == [0.0, 0.0]
  with pytest.raises(ValueError):
    metrics.dense(pred, gt, valid, align="mean")


def test_sparse_options_apply_at_the_points():
  pred = np.full((1, 4, 4), 6.0)
  pred[0, 1, 2] = 200.0
  points = np.array([[[2.0, 1.0, 100.0], [0.0, 0.0, 2.0], [3.0, 3.0, 500.0]]])  # (col, row, z)
  pv = np.ones((1, 3), bool)
  per = metrics.sparse(pred, points, pv, cap=(1.0, 120.0))  # 500 m not evaluated, 200 m read clips to 120
  np.testing.assert_allclose([per["delta1"], per["abs_rel"]], [[0.5], [(0.2 + 2.0) / 2]])
  per = metrics.sparse(pred, points, pv, cap=(150.0, 200.0), empty="zero")
  assert per["delta1"][0] == 0.0 and np.isnan(per["abs_rel"][0])


def test_bad_predictions_count_as_one_micrometre():
  gt = np.full((1, 1, 4), 2.0)
  pred = np.array([[[0.0, -3.0, np.nan, np.inf]]])
  per = metrics.dense(pred, gt, np.ones_like(gt, bool))
  assert per["delta3"][0] == 0.0
  np.testing.assert_allclose([per["abs_rel"], per["rmse"]], [[1 - 5e-7], [2 - 1e-6]])


def test_average_each_metric_over_images_that_have_it():
  """Text answers: a parse failure scores delta1 0 and has no AbsRel; a skipped record neither."""
  per = metrics.text_answers([2.0, None, 3.0, 1.0, 7.0], np.array([2.1, 1.0, 2.0, 1.0, 7.0]),
                             np.array([1.0, 1.0, 1.0, 1.0, 0.0]))
  avg = metrics.average(per)
  assert avg["delta1"] == pytest.approx(0.5) and avg["parsed"] == pytest.approx(0.75)
  assert avg["abs_rel"] == pytest.approx((0.1 / 2.1 + 0.5 + 0.0) / 3)
  assert metrics.average(per, weight=np.array([1.0, 1.0, 0.0, 0.0, 0.0]))["delta1"] == pytest.approx(0.5)
  assert np.isnan(metrics.average({"delta1": np.array([np.nan])})["delta1"])


def test_summarize_is_the_mean_over_all_images_of_all_batches():
  pred, gt, valid = random_batch(2)
  parts = [metrics.dense(pred[:2], gt[:2], valid[:2]), metrics.dense(pred[2:], gt[2:], valid[2:])]
  want = metrics.average(metrics.dense(pred, gt, valid))
  got = metrics.summarize(parts)
  assert set(got) == set(KEYS)
  for k in KEYS:
    assert got[k] == pytest.approx(want[k], rel=1e-12), k


def flying_reference(pred, gt, valid, radius=1, jump=1.25, tol=0.05):
  """Pixel by pixel: the valid gt of the window, an edge test, a between-the-surfaces test."""
  out = []
  for p, g, v in zip(pred, gt, valid):
    edges = flying = 0
    h, w = g.shape
    for i in range(h):
      for j in range(w):
        if not v[i, j]:
          continue
        win = g[max(i - radius, 0):i + radius + 1, max(j - radius, 0):j + radius + 1]
        win = win[v[max(i - radius, 0):i + radius + 1, max(j - radius, 0):j + radius + 1]]
        near, far = win.min(), win.max()
        if far / near > jump:
          edges += 1
          on_label = g[i, j] / (1 + tol) <= p[i, j] <= g[i, j] * (1 + tol)
          flying += near * (1 + tol) < p[i, j] < far / (1 + tol) and not on_label
    out.append(flying / edges if edges else np.nan)
  return np.array(out)


def step_scene():
  """A near surface at 2 m (columns 0-5) in front of a far one at 4 m (columns 6-11)."""
  gt = np.full((1, 8, 12), 2.0)
  gt[..., 6:] = 4.0
  return gt, np.ones_like(gt, bool)


def test_flying_points_blurred_step_floats_sharp_step_does_not():
  gt, valid = step_scene()
  assert metrics.flying_points(gt, gt, valid)[0] == 0.0
  shifted = np.roll(gt, 1, axis=-1)  # sharp but the edge one pixel off: still on a surface
  shifted[..., 0] = 2.0
  assert metrics.flying_points(shifted, gt, valid)[0] == 0.0
  ramp = np.broadcast_to(np.interp(np.arange(12), [3, 8], [2.0, 4.0]), gt.shape)  # 2.8 and 3.2 at the edge
  assert metrics.flying_points(ramp, gt, valid)[0] == 1.0
  steep = np.broadcast_to(np.interp(np.arange(12), [4, 7], [2.0, 4.0]), gt.shape)  # 2, 2.67, 3.33, 4 at 4-7
  assert metrics.flying_points(steep, gt, valid)[0] == 1.0
  assert metrics.flying_points(steep, gt, valid, radius=2)[0] == 0.5  # edge columns 4-7, two of them float
  assert np.isnan(metrics.flying_points(ramp, gt, valid, jump=2.0)[0])  # a jump of exactly 2 is not > 2
  assert np.isnan(metrics.flying_points(gt, np.full_like(gt, 3.0), valid)[0])  # no edge


def test_flying_points_perfect_map_scores_zero_where_three_surfaces_meet():
  gt, valid = step_scene()
  gt[:, 4:, 3:9] = 3.0  # a middle surface touching both: its edge pixels lie between 2 and 4
  assert metrics.flying_points(gt, gt, valid)[0] == 0.0
  flat = np.full_like(gt, 3.0)  # right on the middle surface, floating at the 2 | 4 step
  assert metrics.flying_points(flat, gt, valid)[0] == flying_reference(flat, gt, valid)[0] > 0.2


def test_flying_points_tolerance_and_scale():
  gt, valid = step_scene()
  near_noise = np.where(gt < 3, 2.0 * 1.04, 4.0 / 1.04)  # within 5% of its surface
  assert metrics.flying_points(near_noise, gt, valid)[0] == 0.0
  assert metrics.flying_points(near_noise, gt, valid, tol=0.03)[0] == 1.0
  scaled = 1.5 * gt  # the near surface lands at 3 m, between 2 and 4
  assert metrics.flying_points(scaled, gt, valid)[0] == 0.5
  assert metrics.flying_points(scaled, gt, valid, align="median")[0] == 0.0


def test_flying_points_equal_the_plain_reference():
  """Random blocks (edges), a slope, invalid pixels holding junk depths, blurred noisy predictions."""
  rng = np.random.default_rng(3)
  blocks = np.exp(rng.uniform(0.0, 2.5, (4, 4, 5)))
  gt = np.repeat(np.repeat(blocks, 4, axis=1), 3, axis=2) * np.linspace(1.0, 1.3, 15)
  valid = rng.uniform(size=gt.shape) < 0.85
  gt[~valid] = rng.choice([0.0, 1e4], size=(~valid).sum())
  blurred = (gt + np.roll(gt, 1, -1) + np.roll(gt, -1, -1)) / 3
  pred = np.where(valid, blurred, 5.0) * np.exp(rng.normal(0, 0.05, gt.shape))
  pred[3] = gt[3]  # sharp
  for kw in ({}, {"radius": 2}, {"jump": 1.5, "tol": 0.1}):
    want = flying_reference(pred, gt, valid, **kw)
    assert np.all((want[:3] > 0.1) & (want[:3] < 0.9)) and want[3] == 0.0
    np.testing.assert_allclose(metrics.flying_points(pred, gt, valid, **kw), want, rtol=1e-12, err_msg=str(kw))

"""Focal normalisation, crops, padding, depth targets and DepthLM's marker."""

import numpy as np
import pytest

from depthvlm_jax.data import transforms as T
from depthvlm_jax.data.records import RecordError

# A 480x360 image whose depth map is 64x48 (the 1920x1440 / 256x192 ScanNet++ layout, scaled
# down): fx = 600 makes the canonical image 800x600, 12.5 output pixels per depth pixel.
W, H, WD, HD, FX = 480, 360, 64, 48, 600.0


def _scene(seed=0, num_points=40):
  rng = np.random.default_rng(seed)
  rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
  depth = rng.uniform(0.5, 20.0, (HD, WD)).astype(np.float32)  # distinct values: a pixel is traceable
  valid = rng.random((HD, WD)) > 0.1
  cols, rows = rng.integers(0, WD, num_points), rng.integers(0, HD, num_points)
  points = np.stack([cols, rows, depth[rows, cols]], 1).astype(np.float32)
  intr = (FX, FX * 1.01, 241.3, 178.9)
  return rgb, depth, valid, points, intr


def _normalized(seed=0):
  rgb, depth, valid, points, intr = _scene(seed)
  return T.focal_normalize(rgb, depth, valid, points, intr, (WD, HD), canonical_fx=1000.0, key="k")


def _example(h, w, points=None, depth=None):
  depth = np.ones((h, w), np.float32) if depth is None else depth
  return T.Example(rgb=np.full((h, w, 3), 7, np.uint8), depth=depth, valid=np.ones((h, w), bool),
                   points=points, intrinsics=(1000.0, 1000.0, w / 2, h / 2),
                   pixel_mask=np.ones((h, w), bool), key="k")


def test_focal_normalize_sizes_and_intrinsics():
  ex = _normalized()
  s = 1000.0 / FX
  nw, nh = round(s * W), round(s * H)
  assert (nw, nh) == (800, 600)
  assert ex.rgb.shape == (nh, nw, 3) and ex.rgb.dtype == np.uint8
  assert ex.depth.shape == ex.valid.shape == ex.pixel_mask.shape == (nh, nw)
  fx, fy, cx, cy = ex.intrinsics
  np.testing.assert_allclose([fx, fy], [1000.0, FX * 1.01 * s], rtol=1e-12)
  # Pixel-centre convention: u' = (u + 0.5) * s - 0.5.
  np.testing.assert_allclose([cx, cy], [(241.3 + 0.5) * s - 0.5, (178.9 + 0.5) * s - 0.5], rtol=1e-12)


def test_focal_normalize_rounds_size_and_follows_it():
  rgb = np.zeros((101, 161, 3), np.uint8)
  ex = T.focal_normalize(rgb, None, None, None, (1500.0, 1500.0, 80.0, 50.0), (161, 101))
  assert ex.hw == (round(101 / 1.5), round(161 / 1.5)) == (67, 107)
  assert ex.depth is None and ex.points is None
  np.testing.assert_allclose(ex.intrinsics[:2], (1500.0 * 107 / 161, 1500.0 * 67 / 101))
  assert abs(ex.intrinsics[0] - 1000.0) < 1000.0 * 0.5 / 107


def test_focal_normalize_keeps_metric_depth_and_maps_points_from_the_depth_map():
  rgb, depth, valid, points, _ = _scene()
  ex = _normalized()
  # Dense depth: nearest neighbour (pixel centres), values untouched.
  rows = np.floor((np.arange(600) + 0.5) * HD / 600).astype(int)
  cols = np.floor((np.arange(800) + 0.5) * WD / 800).astype(int)
  np.testing.assert_array_equal(ex.depth, depth[rows[:, None], cols[None, :]])
  np.testing.assert_array_equal(ex.valid, valid[rows[:, None], cols[None, :]])
  # Points: scaled from the DEPTH map's size (64x48), not the RGB's (480x360).
  np.testing.assert_allclose(ex.points[:, 0], (points[:, 0] + 0.5) * 800 / WD - 0.5, atol=1e-4)
  np.testing.assert_allclose(ex.points[:, 1], (points[:, 1] + 0.5) * 600 / HD - 0.5, atol=1e-4)
  np.testing.assert_array_equal(ex.points[:, 2], points[:, 2])
  px = np.floor(ex.points[:, :2] + 0.5).astype(int)
  np.testing.assert_array_equal(ex.depth[px[:, 1], px[:, 0]], points[:, 2])
  wrong = np.floor(points[:, :2] * 800 / W + 0.5).astype(int)  # the release's RGB-size scaling
  assert np.mean(ex.depth[wrong[:, 1], wrong[:, 0]] == points[:, 2]) < 0.5


def test_crop_keeps_depth_at_tracked_pixels():
  ex = _normalized()
  crop = T.random_crop(ex, (320, 448), np.random.default_rng(3))
  left = round(ex.intrinsics[2] - crop.intrinsics[2])
  top = round(ex.intrinsics[3] - crop.intrinsics[3])
  assert crop.hw == (320, 448) and 0 <= top <= 600 - 320 and 0 <= left <= 800 - 448
  assert crop.intrinsics[:2] == ex.intrinsics[:2]
  np.testing.assert_array_equal(crop.rgb, ex.rgb[top:top + 320, left:left + 448])
  np.testing.assert_array_equal(crop.depth, ex.depth[top:top + 320, left:left + 448])
  assert crop.pixel_mask.all()
  inside = [p for p in ex.points
            if 0 <= np.floor(p[0] + 0.5) - left < 448 and 0 <= np.floor(p[1] + 0.5) - top < 320]
  assert 0 < len(crop.points) == len(inside) < len(ex.points)
  np.testing.assert_allclose(crop.points, np.array(inside) - [left, top, 0], atol=1e-4)
  px = np.floor(crop.points[:, :2] + 0.5).astype(int)
  np.testing.assert_array_equal(crop.depth[px[:, 1], px[:, 0]], crop.points[:, 2])


def test_random_crop_is_deterministic_given_the_generator():
  ex = _normalized()
  a = T.random_crop(ex, (96, 96), np.random.default_rng(7))
  b = T.random_crop(ex, (96, 96), np.random.default_rng(7))
  assert a.intrinsics == b.intrinsics
  np.testing.assert_array_equal(a.rgb, b.rgb)


def test_random_crop_pads_a_smaller_image():
  pts = np.array([[2.0, 3.0, 1.5]], np.float32)
  ex = T.random_crop(_example(20, 30, pts), (32, 40), np.random.default_rng(0))
  assert ex.hw == (32, 40) and ex.intrinsics == (1000.0, 1000.0, 15.0, 10.0)
  assert ex.pixel_mask[:20, :30].all() and not ex.pixel_mask[20:].any() and not ex.pixel_mask[:, 30:].any()
  assert not ex.valid[~ex.pixel_mask].any() and (ex.depth[~ex.pixel_mask] == 0).all()
  assert (ex.rgb[~ex.pixel_mask] == 0).all() and (ex.rgb[ex.pixel_mask] == 7).all()
  np.testing.assert_array_equal(ex.points, pts)


def test_center_crop_and_point_dropping():
  # A point belongs to the pixel floor(u + 0.5): 24.6 is in column 25, 24.4 in column 24.
  pts = np.array([[0, 0, 1], [50, 40, 2], [99, 79, 3], [25.4, 20.4, 4], [24.6, 19.6, 5], [24.4, 30, 6],
                  [74.4, 59.4, 7], [74.6, 30, 8]], np.float32)
  ex = T.center_crop(_example(80, 100, pts), (40, 50))  # window rows 20..59, cols 25..74
  assert ex.intrinsics == (1000.0, 1000.0, 25.0, 20.0)
  np.testing.assert_allclose(ex.points, [[25, 20, 2], [0.4, 0.4, 4], [-0.4, -0.4, 5], [49.4, 39.4, 7]],
                             atol=1e-5)


def test_depthlm_crop_sizes_are_centred_and_capped():
  big = _example(1300, 1600)
  for seed in range(20):
    ex = T.depthlm_crop(big, np.random.default_rng(seed))
    h, w = ex.hw
    assert 1000 <= w <= 1400 and 700 <= h <= 1200
    assert ex.intrinsics[2:] == (800.0 - (1600 - w) // 2, 650.0 - (1300 - h) // 2)
    assert ex.pixel_mask.all()
  small = T.depthlm_crop(_example(600, 900), np.random.default_rng(0))
  assert small.hw == (600, 900) and small.intrinsics[2:] == (450.0, 300.0)


def test_pad_to_multiple_and_bucket():
  ex = _example(70, 100, depth=np.full((70, 100), 3.0, np.float32))
  p = T.pad_to_multiple(ex, 32)
  assert p.hw == (96, 128) and p.pixel_mask.sum() == 70 * 100 and p.pixel_mask[:70, :100].all()
  assert p.intrinsics == ex.intrinsics
  assert T.pad_to_multiple(_example(64, 96)).hw == (64, 96)
  assert T.pad_to_bucket(ex, [(128, 128), (96, 128), (64, 256), (96, 96)]).hw == (96, 128)
  with pytest.raises(ValueError, match="fits none"):
    T.pad_to_bucket(ex, [(64, 256)])


def test_depth_targets_range_and_padding():
  d = np.array([[0.0, 0.05, 0.5], [5.0, 10.0, 10.5]], np.float32)
  ex = T.pad_to_multiple(_example(2, 3, depth=d), 4)
  depth, valid = T.depth_targets(ex, (0.05, 10.0))
  assert depth.dtype == np.float32 and valid.dtype == bool and depth.shape == (4, 4)
  expected = np.zeros((4, 4), bool)
  expected[:2, :3] = [[False, False, True], [True, True, False]]
  np.testing.assert_array_equal(valid, expected)
  sparse = T.Example(rgb=np.zeros((4, 4, 3), np.uint8), depth=None, valid=None, points=None,
                     intrinsics=(1.0, 1.0, 2.0, 2.0), pixel_mask=np.ones((4, 4), bool))
  assert not T.depth_targets(sparse, (0.0, 1.0))[1].any()


# The marker, written out as a picture: columns x-5..x, rows y-2..y+2; '#' = red.
ARROW = ["..#...",
         "...#..",
         "#####.",
         "...#..",
         "..#..."]


@pytest.mark.parametrize("x,y", [(10, 7), (5, 2), (29, 17)])
def test_draw_arrow_exact_pixels(x, y):
  rgb = np.random.default_rng(1).integers(0, 200, (20, 30, 3), dtype=np.uint8)
  expected = rgb.copy()
  for r, line in enumerate(ARROW):
    for c, ch in enumerate(line):
      if ch == "#":
        expected[y - 2 + r, x - 5 + c] = (255, 0, 0)
  out = T.draw_arrow(rgb, x, y)
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(out[y, x], rgb[y, x])  # the query pixel keeps its colour
  assert (out != rgb).any(axis=-1).sum() == 9
  assert rgb.max() < 255  # input untouched


def test_draw_arrow_must_fit():
  with pytest.raises(ValueError):
    T.draw_arrow(np.zeros((20, 30, 3), np.uint8), 4, 10)
  with pytest.raises(ValueError):
    T.draw_arrow(np.zeros((20, 30, 3), np.uint8), 10, 18)


def test_sample_query_point_never_within_border():
  h, w = 20, 30
  cols, rows = np.meshgrid(np.arange(w), np.arange(h))
  pts = np.stack([cols.ravel(), rows.ravel(), 1.0 + cols.ravel() + 100 * rows.ravel()], 1).astype(np.float32)
  ex = T.pad_to_multiple(_example(h, w, pts), 32)  # the border counts from the real image's edge
  rng = np.random.default_rng(0)
  got = np.array([T.sample_query_point(ex, rng) for _ in range(2000)])
  assert got[:, 0].min() == 5 and got[:, 0].max() == w - 6
  assert got[:, 1].min() == 5 and got[:, 1].max() == h - 6
  np.testing.assert_array_equal(got[:, 2], 1.0 + got[:, 0] + 100 * got[:, 1])
  T.draw_arrow(ex.rgb, *map(int, got[0, :2]))


def test_sample_query_point_without_candidates():
  edge = np.array([[4, 10, 1.0], [25, 10, 1.0], [10, 4, 1.0], [10, 15, 1.0]], np.float32)
  with pytest.raises(RecordError) as e:
    T.sample_query_point(_example(20, 30, edge), np.random.default_rng(0))
  assert e.value.field == "points"
  with pytest.raises(RecordError):
    T.sample_query_point(_example(20, 30, None), np.random.default_rng(0))


def test_normalize_pixels():
  out = T.normalize_pixels(np.array([[[0, 255, 51]]], np.uint8))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [[[-1.0, 1.0, 51 / 127.5 - 1.0]]], rtol=1e-6)


def test_flip_keeps_points_on_their_depth_and_mirrors_the_camera():
  ex = _normalized(3)
  flipped = T.flip_horizontal(ex)
  w = ex.hw[1]
  np.testing.assert_array_equal(flipped.rgb, ex.rgb[:, ::-1])
  np.testing.assert_array_equal(flipped.depth, ex.depth[:, ::-1])
  px = np.floor(flipped.points[:, :2] + 0.5).astype(int)
  inside = flipped.valid[px[:, 1], px[:, 0]]
  np.testing.assert_array_equal(flipped.depth[px[inside, 1], px[inside, 0]], flipped.points[inside, 2])
  fx, fy, cx, cy = ex.intrinsics
  assert flipped.intrinsics == (fx, fy, w - 1 - cx, cy)
  np.testing.assert_array_equal(T.flip_horizontal(flipped).depth, ex.depth)  # an involution


def test_photometric_changes_appearance_only_within_bounds():
  rgb = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
  out = T.photometric(rgb, np.random.default_rng(1), 0.3)
  assert out.dtype == np.uint8 and out.shape == rgb.shape and not np.array_equal(out, rgb)
  assert np.corrcoef(out.ravel().astype(float), rgb.ravel().astype(float))[0, 1] > 0.8  # the same picture
  np.testing.assert_array_equal(T.photometric(rgb, np.random.default_rng(1), 0.0), rgb)


def test_principal_crop_puts_the_principal_point_at_the_centre_and_pads_around():
  ex = _normalized(4)
  out = T.principal_crop(ex, (1024, 1280))  # larger than the 800x600 image: padding on every side
  fx, fy, cx, cy = out.intrinsics
  assert (np.floor(cx + 0.5), np.floor(cy + 0.5)) == (640, 512)
  top, left = int(np.floor(ex.intrinsics[3] + 0.5)) - 512, int(np.floor(ex.intrinsics[2] + 0.5)) - 640
  assert top < 0 and left < 0
  np.testing.assert_array_equal(out.rgb[-top:-top + 600, -left:-left + 800], ex.rgb)
  np.testing.assert_array_equal(out.depth[-top:-top + 600, -left:-left + 800], ex.depth)
  assert out.pixel_mask.sum() == 600 * 800 and not out.pixel_mask[:-top].any() and not out.pixel_mask[:, :-left].any()
  px = np.floor(out.points[:, :2] + 0.5).astype(int)
  ok = out.valid[px[:, 1], px[:, 0]]
  np.testing.assert_array_equal(out.depth[px[ok, 1], px[ok, 0]], out.points[ok, 2])  # points still on their depth
  small = T.principal_crop(ex, (64, 96))  # smaller: a crop around the principal point
  assert small.pixel_mask.all() and (np.floor(small.intrinsics[2] + 0.5), np.floor(small.intrinsics[3] + 0.5)) == (48, 32)


def test_sample_query_point_inside_an_image_padded_on_every_side():
  """Principal-point windows pad above and to the left too: the border is from the real image."""
  ex = T.principal_crop(_example(40, 60, depth=np.full((40, 60), 3.0, np.float32)), (80, 100))
  rows, cols = np.nonzero(ex.pixel_mask)
  for seed in range(20):
    x, y, z = T.sample_query_point(ex, np.random.default_rng(seed), valid=ex.valid & ex.pixel_mask)
    assert rows.min() + 5 <= y < rows.max() + 1 - 5 and cols.min() + 5 <= x < cols.max() + 1 - 5 and z == 3.0

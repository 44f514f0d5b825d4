"""Procedural scenes: exact z-depth, determinism, records, and what focal length does."""

from __future__ import annotations

import numpy as np
import pytest

from depthvlm_jax.data import synthetic as syn
from depthvlm_jax.data.records import DepthRecord

SMALL = syn.SceneConfig(width_range=(64, 96))


def room_scene(size=(6.0, 3.0, 8.0), camera=(2.5, 1.4, 1.0), pose=(0.0, 0.0, 0.0), spheres=()):
  """An empty room with its corner at the origin, plus optional spheres (centre, radius)."""
  bld = syn._Builder()
  wall = bld.mat(syn.PLAIN, (0.6, 0.6, 0.6), scale=0.5)
  bld.box(np.array(size) / 2, size, wall, shape=syn.ROOM)
  for center, radius in spheres:
    bld.sphere(center, radius, wall)
  return syn.Scene("indoor", np.array(camera), syn.camera_rotation(*pose), tuple(bld.prims),
                   tuple(bld.materials), np.array([3.0, 2.7, 4.0]), 1.5, 0.3,
                   ((0.8, 0.8, 0.8),) * 2, np.inf, 20.0)


def backproject(scene, depth, intrinsics):
  """World points [H, W, 3] (float64) of every pixel at its z-depth."""
  fx, fy, cx, cy = intrinsics
  h, w = depth.shape
  v, u = np.mgrid[0:h, 0:w]
  cam = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u, float)], -1) * depth[..., None]
  return scene.origin + cam @ scene.rotation.T


def surface_residual(scene, pid, points):
  """Distance-like residual of each point from the surface of the primitive its pixel hit."""
  res = np.full(len(points), np.inf)
  for i, prim in enumerate(scene.prims):
    m = pid == i
    rel = points[m] - np.asarray(prim.center)
    c, s = np.cos(prim.yaw), np.sin(prim.yaw)
    q = np.stack([c * rel[:, 0] - s * rel[:, 2], rel[:, 1], s * rel[:, 0] + c * rel[:, 2]], 1)
    if prim.shape == syn.GROUND:
      res[m] = points[m, 1]
    elif prim.shape == syn.SPHERE:
      res[m] = np.linalg.norm(q, axis=1) - prim.half[0]
    else:  # on a box's surface, from outside or inside, the largest |q_k| - h_k is exactly 0
      res[m] = np.max(np.abs(q) - np.asarray(prim.half), 1)
  return res


def test_empty_room_depth_matches_analytic_planes():
  w, h = 65, 49
  intr = (40.0, 40.0, 31.3, 25.6)  # an off-centre principal point
  rgb, depth, pid = syn.render(room_scene(), w, h, intr)
  v, u = np.mgrid[0:h, 0:w]
  x, y = (u - intr[2]) / intr[0], (v - intr[3]) / intr[1]  # camera looks along +Z, y is down
  with np.errstate(divide="ignore"):
    candidates = np.stack([
        np.full(x.shape, 7.0),  # far wall z = 8, camera at z = 1
        np.where(x > 0, 3.5 / x, np.inf), np.where(x < 0, 2.5 / -x, np.inf),  # walls x = 6, x = 0
        np.where(y > 0, 1.4 / y, np.inf), np.where(y < 0, 1.6 / -y, np.inf)])  # floor, ceiling
  np.testing.assert_allclose(depth, candidates.min(0), rtol=1e-5)
  assert np.all(pid == 0) and rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
  floor = candidates.argmin(0) == 3
  cam_y = depth * y  # camera-frame y (down) of floor points is the camera height
  np.testing.assert_allclose(cam_y[floor], 1.4, rtol=1e-5)


def test_posed_room_points_land_on_walls_floor_and_sphere():
  scene = room_scene(camera=(1.2, 1.6, 2.0), pose=(0.7, -0.3, 0.05), spheres=[((3.5, 0.5, 5.0), 0.5)])
  intr = (50.0, 50.0, 39.5, 29.5)
  _, depth, pid = syn.render(scene, 80, 60, intr)
  pts = backproject(scene, depth.astype(np.float64), intr).reshape(-1, 3)
  assert np.any(pid == 1)
  np.testing.assert_allclose(surface_residual(scene, pid.ravel(), pts), 0, atol=2e-5)


@pytest.mark.parametrize("kind", syn.KINDS)
def test_sampled_scenes_backproject_onto_their_surfaces(kind):
  intr = (70.0, 70.0, 47.5, 35.5)
  for seed in range(3):
    scene = syn.sample_scene(seed, kind)
    _, depth, pid = syn.render(scene, 96, 72, intr)
    hit = depth > 0
    pts = backproject(scene, depth.astype(np.float64), intr)[hit]
    res = surface_residual(scene, pid[hit], pts)
    np.testing.assert_array_less(np.abs(res), 1e-5 * depth[hit] + 1e-5)
    assert len(np.unique(pid[hit])) > 3  # more than the room or the street


@pytest.mark.parametrize("kind", syn.KINDS)
def test_culling_never_drops_a_hit(kind, monkeypatch):
  intr = (60.0, 60.0, 40.0, 30.0)
  culled = [syn.render(syn.sample_scene(s, kind), 80, 60, intr) for s in range(3)]
  monkeypatch.setattr(syn, "_screen_rects", lambda c, *a: np.tile([0, a[-1], 0, a[-2]], (len(c), 1)))
  full = [syn.render(syn.sample_scene(s, kind), 80, 60, intr) for s in range(3)]
  for (rgb_a, d_a, p_a), (rgb_b, d_b, p_b) in zip(culled, full):
    np.testing.assert_array_equal(d_a, d_b)
    np.testing.assert_array_equal(p_a, p_b)


def test_same_seed_same_bytes_other_seed_differs():
  for kind in syn.KINDS:
    a = syn.render_scene(7, kind, 64, 48, 50.0)
    b = syn.render_scene(7, kind, 64, 48, 50.0)
    c = syn.render_scene(8, kind, 64, 48, 50.0)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert a[0].tobytes() != c[0].tobytes() and a[1].tobytes() != c[1].tobytes()
  assert syn.make_record(3, SMALL).to_bytes() == syn.make_record(3, SMALL).to_bytes()
  assert syn.make_record(3, SMALL).image != syn.make_record(4, SMALL).image


@pytest.mark.parametrize("kind", syn.KINDS)
def test_many_seeds_sample(kind):
  for seed in range(1000):
    scene = syn.sample_scene(seed, kind)
    assert len(scene.prims) > 1 and np.allclose(scene.rotation @ scene.rotation.T, np.eye(3))


def test_render_scene_intrinsics():
  rgb, depth, intr = syn.render_scene(1, "indoor", 64, 48, 55.0)
  assert intr == (55.0, 55.0, 31.5, 23.5)
  assert rgb.shape == (48, 64, 3) and depth.shape == (48, 64) and depth.dtype == np.float32
  assert syn.render_scene(1, "indoor", 64, 48, 55.0, 30.0, 20.0)[2] == (55.0, 55.0, 30.0, 20.0)
  with pytest.raises(ValueError, match="kind"):
    syn.render_scene(1, "underwater", 64, 48, 55.0)


def test_parallel_rendering_gives_the_serial_records_in_order():
  serial = [r.to_bytes() for r in syn.generate(5, SMALL, seed0=7)]
  assert [r.to_bytes() for r in syn.generate(5, SMALL, seed0=7, workers=2)] == serial


def test_records_validate_and_are_consistent():
  kinds = set()
  for rec in syn.generate(8, SMALL, seed0=100, split="val"):
    rec = DepthRecord.from_bytes(rec.to_bytes()).validate()
    kind = rec.domain
    kinds.add(kind)
    w, h = rec.image_size
    assert rec.decode_image().shape == (h, w, 3) and rec.depth.shape == (h, w) and rec.depth_size == (w, h)
    assert rec.key.startswith(f"synthetic/{kind}/") and rec.dataset == f"synthetic_{kind}"
    assert rec.depth_range == syn.DEPTH_RANGES[kind] and rec.split == "val"
    fx, fy, cx, cy = rec.intrinsics
    assert fx == fy and 0.6 * w <= fx <= 1.4 * w
    assert abs(cx - (w - 1) / 2) <= 0.02 * w and abs(cy - (h - 1) / 2) <= 0.02 * h
    np.testing.assert_array_equal(rec.valid, rec.depth > 0)
    assert rec.points.shape == (100, 3) and len(np.unique(rec.points[:, :2], axis=0)) == 100
    cols, rows = rec.points[:, 0].astype(int), rec.points[:, 1].astype(int)
    np.testing.assert_array_equal(rec.points[:, 2], rec.depth[rows, cols])
    rgb, depth, _ = syn.render_scene(int(rec.key[-8:]), kind, w, h, fx, cx, cy)  # same scene
    np.testing.assert_array_equal(depth, rec.depth)
    np.testing.assert_array_equal(rgb, rec.decode_image())
  assert kinds == {"indoor", "outdoor"}


def test_depth_ranges_and_sky():
  indoor = [syn.render_scene(s, "indoor", 80, 60, 60.0)[1] for s in range(6)]
  assert all(0.05 < d[d > 0].min() and d.max() < 20 and np.all(d > 0) for d in indoor)
  sky_rows = 0
  for s in range(6):
    scene = syn.sample_scene(s, "outdoor")
    _, depth, pid = syn.render(scene, 80, 60, (60.0, 60.0, 39.5, 29.5))
    assert depth.max() > 20 and depth.max() <= 120
    assert np.all(depth[pid < 0] == 0)
    sky_rows += np.all(depth[0] == 0) or np.any(pid[0] < 0)
  assert sky_rows >= 4  # sky shows above most streets


@pytest.mark.parametrize("kind", syn.KINDS)
def test_doubling_fx_zooms_on_the_same_world(kind):
  """Pixel (cx + 2i, cy + 2j) at 2*fx looks along the ray of (cx + i, cy + j) at fx."""
  w, h, fx = 65, 49, 40.0
  for seed in range(2):
    rgb1, d1, _ = syn.render_scene(seed, kind, w, h, fx)
    rgb2, d2, _ = syn.render_scene(seed, kind, w, h, 2 * fx)
    assert d1[24, 32] == d2[24, 32]
    np.testing.assert_array_equal(d2[::2, ::2][6:19, 8:25], d1[18:31, 24:41])
    assert np.abs(rgb2[::2, ::2][6:19, 8:25].astype(int) - rgb1[18:31, 24:41]).max() <= 1


def test_doubling_fx_doubles_object_size():
  scene = room_scene(spheres=[((2.5, 1.4, 5.0), 0.5)])
  size = []
  for fx in (60.0, 120.0):
    _, _, pid = syn.render(scene, 129, 97, (fx, fx, 64.0, 48.0))
    size.append(((pid[48] == 1).sum(), (pid == 1).sum()))
  (w1, a1), (w2, a2) = size
  assert abs(w2 - 2 * w1) <= 1 and abs(a2 / a1 - 4) < 0.2

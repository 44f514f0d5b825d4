"""Procedural rooms and streets with exact metric z-depth and known intrinsics.

The default data of the demo training and of every learning test. Each pixel's depth is an
analytic ray intersection at the pixel centre (exact z, not ray length), and depth can be read
from the image the way it is read from photos: textures of metric size (floor tiles, boards,
lane dashes, window bays), the perspective of floors, walls and streets, objects of known size
(doors, cars), shading and haze. The world and the camera pose depend on the seed only, never on
the image size or focal length: the same seed at fx and 2*fx is the same world seen through a
field of view half as wide, which is what makes focal normalisation matter to a learner.

Frames: world X right, Y up (floor or ground at Y = 0), Z forward. Camera: OpenCV (x right,
y down, z forward); pixel (u, v) = (column, row) looks along ((u - cx)/fx, (v - cy)/fy, 1), so
the intersection parameter along that unnormalised ray is the z-depth itself.
"""

from __future__ import annotations

import colorsys
import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
from typing import Iterator, NamedTuple, Optional

import numpy as np

from depthvlm_jax.data.records import DepthRecord, encode_png

KINDS = ("indoor", "outdoor")
DEPTH_RANGES = {"indoor": (0.05, 20.0), "outdoor": (0.05, 120.0)}

ROOM, GROUND, BOX, SPHERE = range(4)  # a room is a box seen from inside; the ground is Y = 0
PLAIN, NOISE, TILES, PLANKS, FACADE, STREET = range(6)
NEAR = 1e-3  # metres; geometry closer to the camera plane than this is clipped when culling
_BLOCK = 8192  # pixels shaded at a time: small arrays stay in cache and skip mmap page faults


class Material(NamedTuple):
  """A texture of metric scale: `kind` names the pattern, `scale` its period in metres."""
  kind: int
  c1: tuple
  c2: tuple
  scale: float
  aux: tuple = (0.0, 0.0)


class Prim(NamedTuple):
  """Box (centre, half extents, yaw about Y), sphere (half = radius x3), room or ground.
  `mats` holds a material index per face, face = 2 * local axis + (positive side)."""
  shape: int
  center: tuple
  half: tuple
  yaw: float
  mats: tuple


@dataclasses.dataclass(frozen=True)
class Scene:
  """A world and a camera pose; `render` draws it at any size and intrinsics."""
  kind: str
  origin: np.ndarray  # camera centre in the world [3]
  rotation: np.ndarray  # camera-to-world [3, 3]: columns are the camera's x, y, z axes
  prims: tuple
  materials: tuple
  light: np.ndarray  # indoor: point-light position; outdoor: unit vector towards the sun
  intensity: float
  ambient: float
  sky: tuple  # (horizon, zenith) colours; the horizon colour is also the haze colour
  fog: float  # haze distance in metres (inf: clear air)
  max_depth: float  # hits farther than this are unlabelled (0), like a range sensor's limit


@dataclasses.dataclass(frozen=True)
class SceneConfig:
  """How `make_record` draws a record. fx_range is relative to the image width, so the field
  of view spans 2*atan(0.5/1.4) = 39 deg to 2*atan(0.5/0.6) = 80 deg."""
  kind: str = "mixed"  # "indoor", "outdoor" or "mixed"
  indoor_prob: float = 0.5  # for "mixed"
  width_range: tuple[int, int] = (224, 320)
  aspect_range: tuple[float, float] = (0.6, 0.8)  # height / width
  fx_range: tuple[float, float] = (0.6, 1.4)
  principal_jitter: float = 0.02  # max offset of (cx, cy) from the centre, fraction of the size
  max_furniture: int = 6
  max_cars: int = 12
  num_points: int = 100


# ---------------------------------------------------------------------------------------------
# Rendering


def render_scene(seed: int, kind: str, width: int, height: int, fx: float,
                 cx: Optional[float] = None, cy: Optional[float] = None,
                 config: SceneConfig = SceneConfig()):
  """-> (rgb uint8 [H, W, 3], z-depth float32 [H, W] in metres, 0 = none, (fx, fy, cx, cy)).
  The principal point defaults to the image centre; fy = fx."""
  intrinsics = (float(fx), float(fx), (width - 1) / 2 if cx is None else float(cx),
                (height - 1) / 2 if cy is None else float(cy))
  rgb, depth, _ = render(sample_scene(seed, kind, config), width, height, intrinsics)
  return rgb, depth, intrinsics


def render(scene: Scene, width: int, height: int, intrinsics):
  """-> (rgb, depth, prim_id int16 [H, W]: index into scene.prims, -1 where the ray hit nothing)."""
  dirs = _ray_dirs(scene.rotation, width, height, intrinsics)
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    tab = _tables(scene)
    t, pid = _trace(scene, tab, dirs, intrinsics)
    rows = max(1, _BLOCK // width)
    rgb = np.concatenate([_shade(scene, tab, [x[r:r + rows] for x in dirs], t[r:r + rows], pid[r:r + rows])
                          for r in range(0, height, rows)])
  depth = np.where((pid >= 0) & (t <= scene.max_depth), t, 0).astype(np.float32)
  return rgb, depth, pid


def _ray_dirs(rotation, width, height, intrinsics):
  """World directions of the unnormalised pixel rays, three float32 [H, W] arrays."""
  fx, fy, cx, cy = intrinsics
  x = ((np.arange(width) - cx) / fx).astype(np.float32)[None, :]
  y = ((np.arange(height) - cy) / fy).astype(np.float32)[:, None]
  r = rotation.astype(np.float32)
  return [r[k, 0] * x + r[k, 1] * y + r[k, 2] for k in range(3)]


class _Tables(NamedTuple):
  """Primitive and material fields as arrays, for per-pixel gathers."""
  shape: np.ndarray
  center: np.ndarray
  half: np.ndarray
  yaw: np.ndarray
  mats: np.ndarray  # [P * 6] material index of each face
  kind: np.ndarray
  scale: np.ndarray
  aux: np.ndarray
  c1: np.ndarray  # [3, M]
  c2: np.ndarray


def _tables(scene):
  prims, materials = scene.prims, scene.materials
  f32 = lambda values: np.array(values, np.float32)
  return _Tables(
      np.array([p.shape for p in prims]), f32([p.center for p in prims]), f32([p.half for p in prims]),
      f32([p.yaw for p in prims]), np.array([p.mats for p in prims]).ravel(),
      np.array([m.kind for m in materials]), f32([m.scale for m in materials]),
      f32([m.aux for m in materials]), f32([m.c1 for m in materials]).T.copy(),
      f32([m.c2 for m in materials]).T.copy())


_SIGNS = np.array([[(i >> k & 1) * 2 - 1 for k in range(3)] for i in range(8)], np.float64)
_EDGES = np.array([(i, i | b) for b in (1, 2, 4) for i in range(8) if not i & b])


def _screen_rects(centers, halves, yaws, scene, intrinsics, width, height):
  """Pixel rectangles [P, 4] (v0, v1, u0, u1) holding each primitive's image: the projected
  bounding box, clipped at the near plane. Rays outside it cannot hit the primitive."""
  fx, fy, cx, cy = intrinsics
  local = _SIGNS[None] * halves[:, None].astype(np.float64)
  c, s = np.cos(yaws)[:, None], np.sin(yaws)[:, None]
  world = np.stack([c * local[..., 0] + s * local[..., 2], local[..., 1],
                    -s * local[..., 0] + c * local[..., 2]], -1) + centers[:, None]
  cam = (world - scene.origin) @ scene.rotation
  a, b = cam[:, _EDGES[:, 0]], cam[:, _EDGES[:, 1]]
  za, zb = a[..., 2], b[..., 2]
  crossing = (za - NEAR) * (zb - NEAR) < 0
  pts = np.concatenate([cam, a + ((NEAR - za) / (zb - za))[..., None] * (b - a)], 1)
  ok = np.concatenate([cam[..., 2] >= NEAR, crossing], 1)
  z = np.where(ok, pts[..., 2], 1.0)
  u, v = fx * pts[..., 0] / z + cx, fy * pts[..., 1] / z + cy

  def span(p, n):
    lo = np.floor(np.min(np.where(ok, p, np.inf), 1))
    hi = np.floor(np.max(np.where(ok, p, -np.inf), 1)) + 2
    return np.clip(lo, 0, n).astype(np.int64), np.clip(hi, 0, n).astype(np.int64)

  return np.stack(span(v, height) + span(u, width), 1)


def _trace(scene, tab, dirs, intrinsics):
  """Nearest hit per pixel: (t float32 [H, W], inf where none; prim index int16, -1 where none)."""
  height, width = dirs[0].shape
  t = np.full((height, width), np.inf, np.float32)
  pid = np.full((height, width), -1, np.int16)
  centers, halves, yaws = tab.center, tab.half, tab.yaw
  rects = _screen_rects(centers, halves, yaws, scene, intrinsics, width, height)
  o = scene.origin.astype(np.float32)
  inv = [1 / x for x in dirs]
  for i, prim in enumerate(scene.prims):
    if prim.shape in (ROOM, GROUND):
      region = (slice(None), slice(None))
    else:
      v0, v1, u0, u1 = rects[i]
      if v1 <= v0 or u1 <= u0:
        continue
      region = (slice(v0, v1), slice(u0, u1))
    d = [x[region] for x in dirs]
    if prim.shape == ROOM:
      t_new = _room_exit(o, d, centers[i], halves[i])
    elif prim.shape == GROUND:
      t_new = np.where(d[1] < 0, o[1] / -d[1], np.inf)
    elif prim.shape == BOX:
      t_new = _hit_box(o, d, [x[region] for x in inv], centers[i], halves[i], yaws[i])
    else:
      t_new = _hit_sphere(o, d, centers[i], halves[i][0])
    tb = t[region]
    closer = t_new < tb
    np.copyto(tb, t_new, where=closer)
    pid[region][closer] = i
  return t, pid


def _room_exit(o, d, center, half):
  """Where rays from inside an axis-aligned box leave it: the nearest of the far faces."""
  t = None
  for k in range(3):
    tk = np.where(d[k] > 0, center[k] + half[k] - o[k], o[k] - center[k] + half[k]) / np.abs(d[k])
    t = tk if t is None else np.minimum(t, tk)
  return t


def _hit_box(o, d, inv, center, half, yaw):
  """Slab method in the box's frame (a rotation about Y keeps the ray parameter); `inv` are the
  reciprocal world directions, reused when the box is not rotated."""
  rel = o - center
  c, s = np.cos(yaw), np.sin(yaw)
  ol = (c * rel[0] - s * rel[2], rel[1], s * rel[0] + c * rel[2])
  if yaw:
    inv = [1 / x for x in (c * d[0] - s * d[2], d[1], s * d[0] + c * d[2])]
  near = far = None
  for k in range(3):
    t1, t2 = (-half[k] - ol[k]) * inv[k], (half[k] - ol[k]) * inv[k]
    lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
    near = lo if near is None else np.maximum(near, lo)
    far = hi if far is None else np.minimum(far, hi)
  return np.where((near <= far) & (near > 0), near, np.inf)


def _hit_sphere(o, d, center, radius):
  """Near root of |o + t d - c|^2 = r^2, as c / (-b + sqrt(disc)) to avoid cancellation."""
  oc = o - center
  b = d[0] * oc[0] + d[1] * oc[1] + d[2] * oc[2]
  a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
  c = np.float32(oc @ oc - radius * radius)
  disc = b * b - a * c
  t = c / (np.sqrt(np.maximum(disc, 0)) - b)
  return np.where((disc >= 0) & (t > 0), t, np.inf)


def _shade(scene, tab, dirs, t, pid):
  """Albedo from metric textures, Lambertian light, room-corner occlusion, haze, sky; sRGB-ish.
  Works on per-component 1-D arrays: numpy is several times slower on [N, 3] gathers and
  reductions over the short axis."""
  height, width = t.shape
  hit = pid.ravel() >= 0
  if hit.all():
    rgb = [np.empty(hit.size, np.float32) for _ in range(3)]
  else:
    rgb = _sky(scene, [x.ravel() for x in dirs])
  d = [x.ravel()[hit] for x in dirs]
  pi, dist = pid.ravel()[hit].astype(np.intp), t.ravel()[hit]
  p = [np.float32(o) + dist * dk for o, dk in zip(scene.origin, d)]

  shape = np.take(tab.shape, pi)
  ground, sphere, room = shape == GROUND, shape == SPHERE, shape == ROOM
  h = [np.take(tab.half[:, k], pi) for k in range(3)]
  c, s = np.take(np.cos(tab.yaw), pi), np.take(np.sin(tab.yaw), pi)
  rel = [pk - np.take(tab.center[:, k], pi) for k, pk in enumerate(p)]
  q = [c * rel[0] - s * rel[2], rel[1], s * rel[0] + c * rel[2]]
  r = [np.abs(qk) / np.where(hk > 0, hk, 1) for qk, hk in zip(q, h)]
  axis = np.where(ground, 1, np.where((r[0] >= r[1]) & (r[0] >= r[2]), 0, np.where(r[1] >= r[2], 1, 2)))
  on = [axis == k for k in range(3)]
  positive = ground | (np.where(on[0], q[0], np.where(on[1], q[1], q[2])) >= 0)
  sign = np.where(positive != room, np.float32(1), np.float32(-1))
  n = [np.where(sphere, qk / h[0], np.where(on[k], sign, 0)) for k, qk in enumerate(q)]
  normal = [c * n[0] + s * n[2], n[1], -s * n[0] + c * n[2]]

  corner = [qk + hk for qk, hk in zip(q, h)]
  a = np.where(on[0], corner[2], corner[0])
  b = np.where(on[1], corner[2], corner[1])
  if sphere.any():
    a = np.where(sphere, np.arctan2(q[2], q[0]) * h[0], a)
  albedo = _texture(tab, np.take(tab.mats, pi * 6 + 2 * axis + positive), a, b)

  if scene.kind == "indoor":
    to_light = [np.float32(lk) - pk for lk, pk in zip(scene.light, p)]
    r2 = _dot(to_light, to_light)
    cos = np.maximum(_dot(normal, to_light), 0) / np.sqrt(r2)
    gap = [np.where(on[k], np.inf, hk - np.abs(qk)) for k, (qk, hk) in enumerate(zip(q, h))]
    corner_dist = np.minimum(np.minimum(gap[0], gap[1]), gap[2])  # to the room's adjacent faces
    occlusion = np.where(room, 1 - 0.45 * np.exp(-corner_dist / 0.35), 1)
    light = scene.ambient * occlusion + scene.intensity * cos / (1 + r2 / 6.0)
  else:
    cos = np.maximum(_dot(normal, scene.light.astype(np.float32)), 0)
    light = scene.ambient * (0.8 + 0.2 * normal[1]) + scene.intensity * cos
  keep = np.exp(-dist * np.sqrt(_dot(d, d)) / np.float32(scene.fog))  # haze: 1 when fog = inf
  for ch in range(3):
    haze = np.float32(scene.sky[0][ch])
    rgb[ch][hit] = (albedo[ch] * light - haze) * keep + haze
  rgb = np.stack(rgb, -1).reshape(height, width, 3)
  return (np.sqrt(np.clip(rgb, 0, 1)) * 255 + 0.5).astype(np.uint8)


def _dot(x, y):
  return x[0] * y[0] + x[1] * y[1] + x[2] * y[2]


def _sky(scene, d):
  """Channel arrays: horizon to zenith gradient with a sun glow."""
  norm = np.sqrt(_dot(d, d))
  up = np.sqrt(np.clip(d[1] / norm, 0, 1))
  sun = np.exp(200 * (_dot(d, scene.light.astype(np.float32)) / norm - 1))
  return [np.float32(lo) + np.float32(hi - lo) * up + sun for lo, hi in zip(*scene.sky)]


# ---------------------------------------------------------------------------------------------
# Textures: functions of in-face coordinates (a, b) in metres, so their image size tells depth.


_HX, _HY, _HS = np.uint32(0x8DA6B343), np.uint32(0xD8163841), np.uint32(0xCB1AB31F)


def _word(x, mult):
  """Integer lattice coordinate (a float) or seed -> its uint32 term of the hash."""
  return np.asarray(x).astype(np.int32).view(np.uint32) * mult


def _finish(x):
  """Mix the xor of the terms -> uniform float32 in [0, 1)."""
  x = x ^ (x >> np.uint32(13))
  x *= np.uint32(0x5BD1E995)
  x ^= x >> np.uint32(15)
  return (x >> np.uint32(8)).astype(np.float32) * np.float32(1 / (1 << 24))


def _hash(i, j, seed):
  return _finish(_word(i, _HX) ^ _word(j, _HY) ^ _word(seed, _HS))


def _noise(x, y, seed):
  """Value noise with unit lattice spacing, in [0, 1)."""
  i, j = np.floor(x), np.floor(y)
  fx, fy = x - i, y - j
  fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
  wi, wj, ws = _word(i, _HX), _word(j, _HY), _word(seed, _HS)  # (i + 1) * m = i * m + m
  wj, wj1 = wj ^ ws, (wj + _HY) ^ ws
  top = _finish(wi ^ wj) * (1 - fx) + _finish((wi + _HX) ^ wj) * fx
  bottom = _finish(wi ^ wj1) * (1 - fx) + _finish((wi + _HX) ^ wj1) * fx
  return top * (1 - fy) + bottom * fy


# Each texture returns (w, tone): albedo = (c1 + (c2 - c1) * w) * tone, so that the colour work
# happens once per channel on flat arrays.


def _tex_plain(a, b, s, aux, seed):
  """Paint with faint blotches `s` metres across."""
  return np.float32(0), 0.9 + 0.2 * _noise(a / s, b / s, seed)


def _tex_noise(a, b, s, aux, seed):
  """Two-octave blend of c1 and c2 (carpet, foliage, paintings)."""
  w = 0.65 * _noise(a / s, b / s, seed) + 0.35 * _noise(2.7 * a / s, 2.7 * b / s, seed + 1)
  return np.clip(1.6 * w - 0.3, 0, 1), np.float32(1)


def _tex_tiles(a, b, s, aux, seed):
  """Checkered tiles of side `s` metres with aux[:, 0]-metre dark grout."""
  x, y = a / s, b / s
  i, j = np.floor(x), np.floor(y)
  x, y = x - i, y - j
  grout = np.minimum(np.minimum(x, 1 - x), np.minimum(y, 1 - y)) * s < aux[:, 0]
  parity = (i + j) - 2 * np.floor((i + j) / 2)
  return parity, (0.9 + 0.2 * _hash(i, j, seed)) * np.where(grout, np.float32(0.45), 1)


def _tex_planks(a, b, s, aux, seed):
  """Boards `s` metres wide along b, aux[:, 0] metres long with staggered joints (0: stripes)."""
  x = a / s
  i = np.floor(x)
  length = np.where(aux[:, 0] > 0, aux[:, 0], np.inf)
  y = (b + _hash(i, 0, seed) * aux[:, 0]) / length
  j = np.floor(np.where(np.isfinite(length), y, 0))
  seam = ((x - i) * s < 0.006) | ((y - j) * length < 0.006)
  tone = (0.9 + 0.2 * _noise(x * 4, b / (4 * s), seed + 2)) * np.where(seam, np.float32(0.5), 1)
  return _hash(i, j, seed + 1), tone


def _tex_facade(a, b, s, aux, seed):
  """Wall c1 with windows c2 in bays `s` metres wide on storeys aux[:, 0] metres high; shop
  fronts on the ground storey."""
  x, y = a / s, b / aux[:, 0]
  i, j = np.floor(x), np.floor(y)
  x, y = x - i, y - j
  upper = (j >= 1) & (x > 0.22) & (x < 0.78) & (y > 0.3) & (y < 0.82)
  shop = (j < 1) & (x > 0.08) & (x < 0.92) & (y > 0.04) & (y < 0.72) & (b > 0)
  glass = upper | shop
  tone = np.where(glass, 0.35 + 0.9 * _hash(i, j, seed), 0.85 + 0.3 * _noise(a / 0.8, b / 0.8, seed))
  return glass.astype(np.float32), tone


def _tex_street(a, b, s, aux, seed):
  """Ground across a street along Z (a = X, b = Z): asphalt c1 with lanes `s` metres wide,
  dashed (3 m dash, 9 m gap) and solid edge lines, curbs, then 0.6 m paving slabs c2; road
  half-width aux[:, 0]."""
  half = aux[:, 0]
  ax = np.abs(a)
  lane = (a + half) / s
  k = np.round(lane)
  dash = ((np.abs(lane - k) * s < 0.07) & (k > 0) & (k < np.round(2 * half / s))
          & (b - 12 * np.floor(b / 12) < 3))
  paint = dash | (np.abs(ax - (half - 0.35)) < 0.08)
  road = ax < half
  parity, slab = _tex_tiles(a, b, np.float32(0.6), np.full_like(aux, 0.012), seed)
  tone = np.where(road, np.where(paint, np.float32(1.4), 0.8 + 0.4 * _noise(a / 0.35, b / 0.35, seed)),
                  np.where(ax < half + 0.25, np.float32(1.2), slab * (1 - 0.1 * parity)))
  return np.where(road & ~paint, np.float32(0), 1), tone


_TEXTURES = {PLAIN: _tex_plain, NOISE: _tex_noise, TILES: _tex_tiles, PLANKS: _tex_planks,
             FACADE: _tex_facade, STREET: _tex_street}


def _texture(tab, mi, a, b):
  """Per-pixel albedo, three float32 channel arrays, for material indices `mi`."""
  w, tone = np.empty(len(mi), np.float32), np.empty(len(mi), np.float32)
  kind = np.take(tab.kind, mi)
  for k, fn in _TEXTURES.items():
    sel = np.flatnonzero(kind == k)
    if sel.size:
      m = np.take(mi, sel)
      w[sel], tone[sel] = fn(np.take(a, sel), np.take(b, sel), np.take(tab.scale, m),
                             np.take(tab.aux, m, 0), m)
  albedo = []
  for c1, c2 in zip(tab.c1, tab.c2):
    c1 = np.take(c1, mi)
    albedo.append((c1 + (np.take(c2, mi) - c1) * w) * tone)
  return albedo


# ---------------------------------------------------------------------------------------------
# Scenes


class _Builder:
  """Collects materials and primitives while a scene is drawn."""

  def __init__(self):
    self.materials, self.prims = [], []

  def mat(self, kind, c1, c2=None, scale=1.0, aux=(0.0, 0.0)):
    self.materials.append(Material(kind, tuple(c1), tuple(c1 if c2 is None else c2), scale, tuple(aux)))
    return len(self.materials) - 1

  def box(self, center, size, mat, yaw=0.0, shape=BOX):
    mats = tuple(mat) if isinstance(mat, tuple) else (mat,) * 6
    self.prims.append(Prim(shape, tuple(center), tuple(0.5 * np.asarray(size)), float(yaw), mats))

  def sphere(self, center, radius, mat):
    self.prims.append(Prim(SPHERE, tuple(center), (radius,) * 3, 0.0, (mat,) * 6))


def _hsv(rng, h, s, v):
  return colorsys.hsv_to_rgb(rng.uniform(*h) % 1, rng.uniform(*s), rng.uniform(*v))


def _rot_y(a):
  c, s = np.cos(a), np.sin(a)
  return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
  """Camera-to-world matrix. yaw turns right (towards +X), pitch looks up, roll about the view."""
  cp, sp, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
  look_up = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
  spin = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
  return _rot_y(yaw) @ look_up @ spin @ np.diag([1.0, -1.0, 1.0])


def sample_scene(seed: int, kind: str, config: SceneConfig = SceneConfig()) -> Scene:
  """The world and camera pose of a seed; independent of image size and intrinsics."""
  rng = np.random.default_rng(seed)
  if kind == "indoor":
    return _indoor(rng, config.max_furniture)
  if kind == "outdoor":
    return _outdoor(rng, config.max_cars)
  raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _indoor(rng, max_furniture):
  """A box room 3-8 m wide with tiled, boarded or carpeted floor, a door, windows, pictures,
  skirting boards, furniture and balls on the floor, lit by a ceiling lamp."""
  bld = _Builder()
  size = np.array([rng.uniform(3, 8), rng.uniform(2.4, 3.2), rng.uniform(3, 8)])
  floor_kind = rng.integers(3)
  if floor_kind == 0:
    floor = bld.mat(TILES, _hsv(rng, (0, 1), (0, 0.3), (0.3, 0.8)), _hsv(rng, (0, 1), (0, 0.3), (0.2, 0.8)),
                    rng.choice([0.3, 0.4, 0.5, 0.6]), (0.004, 0))
  elif floor_kind == 1:
    wood = _hsv(rng, (0.05, 0.1), (0.4, 0.7), (0.25, 0.6))
    floor = bld.mat(PLANKS, wood, np.array(wood) * rng.uniform(0.6, 0.9), rng.uniform(0.12, 0.22),
                    (rng.uniform(1.2, 2.4), 0))
  else:
    carpet = _hsv(rng, (0, 1), (0.1, 0.5), (0.2, 0.6))
    floor = bld.mat(NOISE, carpet, np.array(carpet) * 0.7, 0.25)
  paint = _hsv(rng, (0, 1), (0, 0.25), (0.55, 0.9))
  walls = [bld.mat(PLAIN, paint, scale=0.6)]
  if rng.random() < 0.5:
    walls.append(bld.mat(PLANKS, _hsv(rng, (0, 1), (0, 0.4), (0.4, 0.9)), paint,
                         rng.uniform(0.08, 0.3)))
  wall = [walls[rng.integers(len(walls))] for _ in range(4)]
  ceiling = bld.mat(PLAIN, _hsv(rng, (0, 1), (0, 0.05), (0.8, 0.95)), scale=1.0)
  bld.box(size / 2, size, (wall[0], wall[1], floor, ceiling, wall[2], wall[3]), shape=ROOM)

  trim = bld.mat(PLAIN, _hsv(rng, (0, 1), (0, 0.2), (0.2, 0.95)), scale=0.3)
  skirt = rng.uniform(0.06, 0.12)
  for w in range(4):
    _on_wall(bld, size, w, size[2 - 2 * (w // 2)] / 2, size[2 - 2 * (w // 2)] - 0.04, 0, skirt, 0.015, trim)

  camera = np.array([rng.uniform(0.4, size[0] - 0.4), rng.uniform(1.2, 1.7), rng.uniform(0.4, size[2] - 0.4)])
  spans = [[] for _ in range(4)]  # occupied intervals along each wall

  def free_spot(w, width):
    length = size[2 - 2 * (w // 2)]
    for _ in range(10):
      along = rng.uniform(width / 2 + 0.1, length - width / 2 - 0.1) if length > width + 0.2 else None
      if along is not None and all(abs(along - x) > (width + wd) / 2 + 0.1 for x, wd in spans[w]):
        spans[w].append((along, width))
        return along
    return None

  decor = [("door", 0.9 if rng.random() < 0.8 else 0.0)] + [("window", 0.5)] * 2 + [("picture", 0.6)] * 3
  for item, prob in decor:
    if rng.random() >= prob:
      continue
    w = int(rng.integers(4))
    if item == "door":
      width, bottom, height, depth = rng.uniform(0.8, 0.95), 0.0, rng.uniform(2.0, 2.1), 0.05
      mat = bld.mat(PLANKS, _hsv(rng, (0.05, 0.1), (0.2, 0.6), (0.2, 0.8)), None, width / 3, (0, 0))
    elif item == "window":
      width, height = rng.uniform(0.8, 1.6), rng.uniform(1.0, min(1.5, size[1] - 0.95))
      bottom, depth = rng.uniform(0.8, min(1.0, size[1] - height - 0.15)), 0.03
      mat = bld.mat(NOISE, _hsv(rng, (0.55, 0.62), (0.1, 0.4), (0.8, 1.0)), (0.95, 0.95, 0.95), 0.8)
    else:
      width, height = rng.uniform(0.3, 1.0), rng.uniform(0.3, 0.8)
      bottom, depth = rng.uniform(1.2, 1.7) - height / 2, 0.03
      mat = bld.mat(NOISE, _hsv(rng, (0, 1), (0.3, 0.9), (0.2, 0.9)),
                    _hsv(rng, (0, 1), (0.3, 0.9), (0.2, 0.9)),
                    rng.uniform(0.05, 0.3))
    along = free_spot(w, width)
    if along is not None:
      _on_wall(bld, size, w, along, width, bottom, height, depth, mat)

  footprints = [(camera[0], camera[2], 0.3)]

  def place(radius):
    for _ in range(20):
      x, z = rng.uniform(radius, size[0] - radius), rng.uniform(radius, size[2] - radius)
      if all(np.hypot(x - fx, z - fz) > radius + fr + 0.1 for fx, fz, fr in footprints):
        footprints.append((x, z, radius))
        return x, z
    return None

  for _ in range(rng.integers(1, max_furniture + 1)):
    item = rng.choice(["cabinet", "table", "crate", "ball"], p=[0.3, 0.25, 0.25, 0.2])
    color = _hsv(rng, (0, 1), (0.1, 0.8), (0.15, 0.9))
    if item == "ball":
      r = rng.uniform(0.1, 0.45)
      spot = place(r)
      pattern = NOISE if rng.random() < 0.5 else PLAIN
      mat = bld.mat(pattern, color, _hsv(rng, (0, 1), (0.3, 0.9), (0.3, 0.9)), r)
      if spot:
        bld.sphere((spot[0], r, spot[1]), r, mat)
      continue
    if item == "cabinet":
      dims = np.array([rng.uniform(0.4, 1.8), rng.uniform(0.5, 2.0), rng.uniform(0.3, 0.6)])
    elif item == "table":
      dims = np.array([rng.uniform(0.8, 1.8), rng.uniform(0.7, 0.78), rng.uniform(0.6, 1.0)])
    else:
      dims = np.array([rng.uniform(0.3, 0.9), rng.uniform(0.25, 0.8), rng.uniform(0.3, 0.9)])
    spot = place(np.hypot(dims[0], dims[2]) / 2)
    if spot is None:
      continue
    mat = bld.mat(PLANKS if rng.random() < 0.5 else PLAIN, color, np.array(color) * 0.8,
                  rng.uniform(0.1, 0.3), (rng.uniform(0.5, 1.5), 0))
    yaw = rng.uniform(-np.pi, np.pi) if rng.random() < 0.4 else rng.integers(2) * np.pi / 2
    if item == "table":
      top = 0.04
      bld.box((spot[0], dims[1] - top / 2, spot[1]), (dims[0], top, dims[2]), mat, yaw)
      legs = _rot_y(yaw)[[0, 2]][:, [0, 2]] @ (np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]]).T
                                                * (dims[[0, 2]][:, None] / 2 - 0.05))
      for lx, lz in legs.T:
        bld.box((spot[0] + lx, (dims[1] - top) / 2, spot[1] + lz), (0.05, dims[1] - top, 0.05), mat, yaw)
    else:
      bld.box((spot[0], dims[1] / 2, spot[1]), dims, mat, yaw)

  across = size - camera  # the camera's mirror image through the room centre: a long view
  yaw = np.arctan2(across[0] - camera[0], across[2] - camera[2]) + rng.normal(0, 0.4)
  light = np.array([rng.uniform(0.3, 0.7) * size[0], size[1] - 0.25, rng.uniform(0.3, 0.7) * size[2]])
  return Scene("indoor", camera, camera_rotation(yaw, rng.uniform(-0.5, 0.1), rng.normal(0, 0.03)),
               tuple(bld.prims), tuple(bld.materials), light, rng.uniform(1.5, 2.5), rng.uniform(0.3, 0.45),
               ((0.8, 0.8, 0.8), (0.8, 0.8, 0.8)), np.inf, DEPTH_RANGES["indoor"][1])


def _on_wall(bld, size, wall, along, width, bottom, height, depth, mat):
  """A slab against wall 0 (x = 0), 1 (x = X), 2 (z = 0) or 3 (z = Z), `along` metres along it."""
  y = bottom + height / 2
  if wall < 2:
    x = depth / 2 if wall == 0 else size[0] - depth / 2
    bld.box((x, y, along), (depth, height, width), mat)
  else:
    z = depth / 2 if wall == 2 else size[2] - depth / 2
    bld.box((along, y, z), (width, height, depth), mat)


def _outdoor(rng, max_cars):
  """A street along +Z: lanes with markings, sidewalks, rows of buildings with windows, maybe
  a building closing the street, cars, vans, lamp posts and trees, sun, sky and haze."""
  bld = _Builder()
  lanes, lane = int(rng.integers(2, 5)), rng.uniform(3.0, 3.7)
  half, walk = lanes * lane / 2, rng.uniform(2.0, 5.0)
  bld.prims.append(Prim(GROUND, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 0.0, (bld.mat(
      STREET, _hsv(rng, (0, 1), (0, 0.08), (0.12, 0.3)), _hsv(rng, (0.05, 0.15), (0, 0.25), (0.4, 0.7)),
      lane, (half, walk)),) * 6))

  def building(x0, x1, z0, z1, height):
    wall = _hsv(rng, (0.0, 0.15), (0.05, 0.5), (0.3, 0.85))
    glass = _hsv(rng, (0.5, 0.65), (0.1, 0.5), (0.15, 0.5))
    facade = bld.mat(FACADE, wall, glass, rng.uniform(2.0, 4.0), (rng.uniform(3.0, 3.6), 0))
    roof = bld.mat(PLAIN, _hsv(rng, (0, 1), (0, 0.1), (0.15, 0.4)), scale=2.0)
    bld.box(((x0 + x1) / 2, height / 2, (z0 + z1) / 2), (x1 - x0, height, z1 - z0),
            (facade, facade, roof, roof, facade, facade))

  end = rng.uniform(60, 180) if rng.random() < 0.5 else np.inf
  for side in (-1, 1):
    z = rng.uniform(-40, -20)
    while z < min(end, 220):
      length = rng.uniform(8, 35)
      if rng.random() < 0.2:  # a cross street
        z += rng.uniform(8, 16)
      front = half + walk + rng.uniform(0, 2) * (rng.random() < 0.3)
      x = sorted((side * front, side * (front + rng.uniform(8, 20))))
      building(x[0], x[1], z, z + length, rng.uniform(1, 12) * rng.uniform(3.0, 3.6))
      z += length + rng.uniform(0, 1.5)
  if np.isfinite(end):
    building(-150, 150, end, end + rng.uniform(10, 20), rng.uniform(6, 40))

  cam_lane = int(rng.integers(lanes))
  camera = np.array([-half + lane * (cam_lane + 0.5) + rng.uniform(-0.3, 0.3), rng.uniform(1.4, 2.2), 0.0])
  cars = 0
  for k in range(lanes):
    z = rng.uniform(6, 20) if k == cam_lane else rng.uniform(-15, 15)
    while z < 110 and cars < max_cars:
      length = _car(bld, rng, -half + lane * (k + 0.5) + rng.uniform(-0.2, 0.2), z)  # clear of the camera
      cars += 1
      z += length + rng.uniform(3, 40)

  lamp = bld.mat(PLAIN, (0.05, 0.06, 0.08), scale=0.5)
  metal = bld.mat(PLAIN, _hsv(rng, (0, 1), (0, 0.2), (0.2, 0.5)), scale=1.0)
  bark = bld.mat(PLAIN, (0.18, 0.12, 0.07), scale=0.3)
  leaves = bld.mat(NOISE, _hsv(rng, (0.2, 0.35), (0.5, 0.8), (0.15, 0.35)),
                   _hsv(rng, (0.2, 0.35), (0.4, 0.8), (0.3, 0.6)), 0.35)
  for side in (-1, 1):
    z = rng.uniform(-10, 10)
    while z < min(end, 150):
      if rng.random() < 0.5:
        pole = rng.uniform(6, 9)
        bld.box((side * (half + 0.5), pole / 2, z), (0.15, pole, 0.15), metal)
        bld.box((side * (half + 0.5 - 0.75), pole - 0.1, z), (1.5, 0.15, 0.3), lamp)
      elif walk > 2.5:
        trunk, crown = rng.uniform(2.0, 3.5), rng.uniform(1.2, min(2.5, walk - 0.5))
        x = side * (half + walk / 2 + 0.25)
        bld.box((x, trunk / 2, z), (0.3, trunk, 0.3), bark)
        bld.sphere((x, trunk + 0.7 * crown, z), crown, leaves)
      z += rng.uniform(12, 35)

  yaw = rng.normal(0, 0.2)
  up = rng.uniform(0.25, 1.1)
  sun = _rot_y(rng.uniform(-np.pi, np.pi)) @ np.array([0.0, np.sin(up), np.cos(up)])
  horizon = np.array(_hsv(rng, (0.55, 0.62), (0.05, 0.25), (0.8, 0.95)))
  zenith = np.array(_hsv(rng, (0.58, 0.64), (0.35, 0.7), (0.55, 0.85)))
  return Scene("outdoor", camera, camera_rotation(yaw, rng.uniform(-0.12, 0.05), rng.normal(0, 0.02)),
               tuple(bld.prims), tuple(bld.materials), sun, rng.uniform(0.8, 1.1), rng.uniform(0.3, 0.45),
               (tuple(horizon), tuple(zenith)), rng.uniform(150, 500), DEPTH_RANGES["outdoor"][1])


def _car(bld, rng, x, z):
  """A car (body, cabin, wheels) or, sometimes, a van; returns its length."""
  yaw = rng.normal(0, 0.04)
  saturation = (0, 0.9) if rng.random() < 0.5 else (0, 0.1)  # half the cars white, grey or black
  paint = bld.mat(PLAIN, _hsv(rng, (0, 1), saturation, (0.05, 0.9)), scale=1.0)
  dark = bld.mat(PLAIN, (0.04, 0.04, 0.05), scale=0.5)
  van = rng.random() < 0.15
  if van:
    length, width = rng.uniform(5.5, 9), rng.uniform(2.1, 2.5)
  else:
    length, width = rng.uniform(4.0, 4.9), rng.uniform(1.7, 1.9)
  body = rng.uniform(2.2, 3.0) if van else rng.uniform(0.7, 0.9)
  c, s = np.cos(yaw), np.sin(yaw)
  bld.box((x, 0.3 + body / 2, z + length / 2), (width, body, length), paint, yaw)
  if not van:
    cabin = rng.uniform(2.0, 2.6)
    off = rng.uniform(-0.4, 0.1)
    bld.box((x + s * off, 0.3 + body + 0.25, z + length / 2 + c * off), (0.9 * width, 0.5, cabin), dark, yaw)
  for f in (0.2, 0.8):
    off = (f - 0.5) * length
    bld.box((x + s * off, 0.33, z + length / 2 + c * off), (width + 0.04, 0.66, 0.66), dark, yaw)
  return length


# ---------------------------------------------------------------------------------------------
# Records


def make_record(seed: int, config: SceneConfig = SceneConfig(), split: str = "train") -> DepthRecord:
  """One validated synthetic DepthRecord. Kind, size and camera come from their own stream,
  seeded (seed, 1), so that render_scene(seed, kind, ...) reproduces the record's scene."""
  rng = np.random.default_rng([seed, 1])
  kind = config.kind
  if kind == "mixed":
    kind = "indoor" if rng.random() < config.indoor_prob else "outdoor"
  width = int(rng.integers(config.width_range[0], config.width_range[1] + 1))
  height = int(round(width * rng.uniform(*config.aspect_range)))
  fx = width * rng.uniform(*config.fx_range)
  jitter = config.principal_jitter * rng.uniform(-1, 1, 2)
  cx, cy = (width - 1) / 2 + jitter[0] * width, (height - 1) / 2 + jitter[1] * height
  rgb, depth, intrinsics = render_scene(seed, kind, width, height, fx, cx, cy, config)
  valid = depth > 0
  rows, cols = np.nonzero(valid)
  pick = rng.choice(len(rows), min(config.num_points, len(rows)), replace=False)
  points = np.stack([cols[pick], rows[pick], depth[rows[pick], cols[pick]]], 1).astype(np.float32)
  key = f"synthetic/{kind}/{seed:08d}"
  return DepthRecord(
      key=key, image=encode_png(rgb), image_size=(width, height), intrinsics=intrinsics,
      depth_size=(width, height), dataset=f"synthetic_{kind}", domain=kind,
      depth_range=DEPTH_RANGES[kind], depth=depth, valid=valid, points=points,
      depth_source_type="z", scene_id=key, frame_id="0", split=split).validate()


def generate(num: int, config: SceneConfig = SceneConfig(), seed0: int = 0,
             split: str = "train", workers: int = 1) -> Iterator[DepthRecord]:
  """Records for seeds seed0, seed0 + 1, ..., seed0 + num - 1, in that order. With workers > 1
  (0: one per CPU core) they are rendered in that many spawned processes (each record depends on
  its seed only, so the output is the same); spawned, not forked, as the caller may hold JAX's
  threads."""
  seeds = range(seed0, seed0 + num)
  workers = workers or os.cpu_count() or 1
  if workers <= 1 or num < 2:
    yield from (make_record(seed, config, split) for seed in seeds)
    return
  render = functools.partial(make_record, config=config, split=split)
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
    yield from pool.map(render, seeds, chunksize=8)

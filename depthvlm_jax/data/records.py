"""The unified metric-depth record: one image, its z-depth (dense and/or sparse), its camera.

Every source (DepthVLM-Bench, DepthLM, NYUv2, KITTI, DIODE, ETH3D, synthetic scenes) becomes
this one schema at ingest, so nothing downstream knows where an image came from. Depth is
always z-depth in metres: ray-length sources are converted at ingest (`depth_source_type`
remembers which it was). Sparse points live at the depth map's own resolution.

Records are validated when built (`DepthRecord.validate`) and serialised with msgpack
(`to_bytes` / `from_bytes`) into ArrayRecord shards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from typing import Optional

import numpy as np
from flax import serialization
from PIL import Image

DOMAINS = ("indoor", "outdoor", "mixed")
DEPTH_TYPES = ("z", "ray")
# Depths beyond FAR_FACTOR x the dataset's max are refused as mislabelled (a wrong scale, mm as m,
# a sentinel such as 1e9); depths between max and that are real but unevaluated, so merely invalid.
# 10x leaves room for sensors that see past the evaluated range (KITTI's uint16/256 reaches 256 m
# against an 80 m max) while any unit error of 1000x is caught.
FAR_FACTOR = 10.0
# Dense vs sparse cross-check (`dense_vs_points`): a point disagrees beyond 5% (uint16 quantisation
# is < 1% above 0.5 m even at depth_scale 256), and more than 20% of points disagreeing is refused.
POINT_TOLERANCE = 0.05
MAX_DISAGREEING = 0.2


class RecordError(ValueError):
  """A record that cannot be used; the message names the record and the field."""

  def __init__(self, record: str, field: str, problem: str):
    super().__init__(f"record {record!r}, field {field!r}: {problem}")
    self.record, self.field, self.problem = record, field, problem


@contextlib.contextmanager
def located(loc: str):
  """Prefixes RecordErrors raised deeper (which name only the record key) with where the record
  lives ('file:line', 'shard record N')."""
  try:
    yield
  except RecordError as e:
    if e.record == loc or e.record.startswith(f"{loc} ["):  # already located
      raise
    raise RecordError(f"{loc} [{e.record}]", e.field, e.problem) from e


@dataclasses.dataclass
class DepthRecord:
  """One image and its metric depth labels.

  image: encoded RGB (PNG/JPEG bytes). image_size, depth_size: (W, H).
  intrinsics: (fx, fy, cx, cy) in pixels at the image's resolution.
  depth: [Hd, Wd] float32 z-depth in metres (0 where unknown), or None (sparse only).
  valid: [Hd, Wd] bool, or None (then depth > 0 inside depth_range).
  points: [N, 3] float32 (col, row, z) at the depth map's resolution, or None.
  """

  key: str
  image: bytes
  image_size: tuple[int, int]
  intrinsics: tuple[float, float, float, float]
  depth_size: tuple[int, int]
  dataset: str
  domain: str
  depth_range: tuple[float, float]
  depth: Optional[np.ndarray] = None
  valid: Optional[np.ndarray] = None
  points: Optional[np.ndarray] = None
  depth_source_type: str = "z"
  scene_id: str = ""
  frame_id: str = ""
  split: str = "test"

  def validate(self) -> "DepthRecord":
    """Raises RecordError naming the first bad field; returns self. Beyond types and shapes, it
    refuses what a mislabelled source produces: depths absurdly beyond the dataset's range, a
    principal point outside the image, a depth map whose aspect is not the image's (transposed),
    and a dense map that disagrees with the record's own sparse points."""
    self.check_types()
    k = self.key

    def bad(field, problem):
      raise RecordError(k, field, problem)

    for name in ("image_size", "depth_size"):
      if min(getattr(self, name)) <= 0:
        bad(name, f"must be (W, H) with positive sizes, got {getattr(self, name)}")
    fx, fy, cx, cy = self.intrinsics
    if not all(np.isfinite(self.intrinsics)):
      bad("intrinsics", f"must be 4 finite numbers (fx, fy, cx, cy), got {self.intrinsics}")
    if fx <= 0 or fy <= 0:
      bad("intrinsics", f"focal lengths must be positive, got fx={fx}, fy={fy}")
    w, h = self.image_size
    # Pixel centres sit at integers, so the image spans [-0.5, W - 0.5]; a principal point
    # outside it means intrinsics for another resolution or crop (e.g. cx given in the
    # full-size image's pixels for a downscaled one).
    if not (-0.5 <= cx <= w - 0.5 and -0.5 <= cy <= h - 0.5):
      bad("intrinsics", f"principal point (cx, cy) = ({cx:g}, {cy:g}) lies outside the {w}x{h} image "
          f"([-0.5, {w - 0.5:g}] x [-0.5, {h - 0.5:g}]): intrinsics for another image size?")
    if self.domain not in DOMAINS:
      bad("domain", f"must be one of {DOMAINS}, got {self.domain!r}")
    if self.depth_source_type not in DEPTH_TYPES:
      bad("depth_source_type", f"must be one of {DEPTH_TYPES}, got {self.depth_source_type!r}")
    lo, hi = self.depth_range
    if not (np.isfinite(hi) and 0 <= lo < hi):
      bad("depth_range", f"must satisfy 0 <= min < max < inf, got {self.depth_range}")
    if self.depth is None and self.points is None:
      bad("depth", "a record needs a dense depth map, sparse points, or both")
    wd, hd = self.depth_size
    # The depth map is the image resized (pipelines scale both by one factor): its aspect must be
    # the image's up to one pixel of rounding on each axis, which a transposed map is not.
    if abs(wd * h - hd * w) > w + h:
      bad("depth_size", f"the depth map is {wd}x{hd} (W x H, aspect {wd / hd:.3f}) but the image is {w}x{h} "
          f"(aspect {w / h:.3f}): a transposed depth map, or (W, H) given as (H, W)?")
    far = FAR_FACTOR * hi
    if self.depth is not None:
      d = self.depth
      if not np.all(np.isfinite(d)) or np.any(d < 0):
        bad("depth", "contains NaN, inf or negative values; set unknown pixels to 0")
      if np.any(d > far):
        bad("depth", f"max {float(d.max()):g} m is beyond {FAR_FACTOR:g}x the dataset's max depth "
            f"{hi:g} m: a wrong depth scale or unit (mm as m)?")
      if not np.any(self.valid_mask()):
        bad("valid", f"no pixel has a valid depth inside depth_range {self.depth_range}")
    if self.points is not None:
      p = self.points
      if not np.all(np.isfinite(p)) or np.any(p[:, 2] <= 0):
        bad("points", "depths must be finite and positive")
      if np.any(p[:, 0] < 0) or np.any(p[:, 0] > wd - 1) or np.any(p[:, 1] < 0) or np.any(p[:, 1] > hd - 1):
        bad("points", f"coordinates fall outside the {wd}x{hd} depth map")
      beyond = np.flatnonzero(p[:, 2] > far)
      if len(beyond):
        i = beyond[0]
        bad("points", f"{len(beyond)} of {len(p)} depths are beyond {FAR_FACTOR:g}x the dataset's max depth "
            f"{hi:g} m, e.g. point {i} at (col {p[i, 0]:g}, row {p[i, 1]:g}): {p[i, 2]:g} m")
    if self.depth is not None and self.points is not None:
      problem = dense_vs_points(self.depth, self.points, self.valid)
      if problem:
        bad("depth", problem)
    return self

  def check_types(self) -> "DepthRecord":
    """Types and shapes only (no pass over the arrays' values), cheap enough for every read:
    a bool or a string where a number belongs is refused, not silently taken as 1.0."""
    k = self.key if isinstance(self.key, str) else "?"

    def bad(field, problem):
      raise RecordError(k, field, problem)

    for name in ("key", "dataset", "domain", "depth_source_type", "scene_id", "frame_id", "split"):
      if not isinstance(getattr(self, name), str):
        bad(name, f"must be a string, got {_describe(getattr(self, name))}")
    if not self.key:
      bad("key", "empty")
    if not isinstance(self.image, bytes) or not self.image:
      bad("image", f"must be non-empty encoded image bytes, got {_describe(self.image)}")
    for name, n, kind in (("image_size", 2, _is_int), ("depth_size", 2, _is_int),
                          ("intrinsics", 4, _is_real), ("depth_range", 2, _is_real)):
      value = getattr(self, name)
      if not isinstance(value, (tuple, list)) or len(value) != n or not all(kind(x) for x in value):
        what = "integers" if kind is _is_int else "numbers (not bools)"
        bad(name, f"must be {n} {what}, got {_describe(value)}")
    wd, hd = self.depth_size
    for name, dtype, shape in (("depth", np.float32, (hd, wd)), ("valid", np.bool_, (hd, wd)),
                               ("points", np.float32, None)):
      a = getattr(self, name)
      if a is None:
        continue
      if not isinstance(a, np.ndarray) or a.dtype != dtype:
        bad(name, f"must be a {np.dtype(dtype)} array, got {_describe(a)}")
      if shape is not None and a.shape != shape:
        bad(name, f"must be [{hd}, {wd}] (depth_size is W, H), got {list(a.shape)}")
    if self.valid is not None and self.depth is None:
      bad("valid", "a validity mask needs a dense depth map")
    p = self.points
    if p is not None and (p.ndim != 2 or p.shape[1] != 3 or len(p) == 0):
      bad("points", f"must be non-empty float32 [N, 3] (col, row, z), got {list(p.shape)}")
    return self

  def valid_mask(self) -> np.ndarray:
    """Dense validity: the stored mask (if any) and depth inside the dataset's range."""
    lo, hi = self.depth_range
    m = (self.depth > max(lo, 0.0)) & (self.depth <= hi)
    return m if self.valid is None else (m & self.valid)

  def decode_image(self) -> np.ndarray:
    """[H, W, 3] uint8 RGB (grayscale, RGBA and 16-bit images are converted), of the record's
    image_size (the intrinsics and labels are for that size)."""
    rgb = decode_rgb(self.image, self.key)
    if (rgb.shape[1], rgb.shape[0]) != tuple(self.image_size):
      raise RecordError(self.key, "image_size", f"says {self.image_size} but the image is {rgb.shape[1]}x{rgb.shape[0]}")
    return rgb

  def to_bytes(self) -> bytes:
    d = dataclasses.asdict(self)
    d = {k: v for k, v in d.items() if v is not None}
    d["image"] = np.frombuffer(self.image, np.uint8)
    for name in ("image_size", "depth_size", "intrinsics", "depth_range"):
      d[name] = np.asarray(d[name], np.float64 if name in ("intrinsics", "depth_range") else np.int64)
    return serialization.msgpack_serialize(d)

  @classmethod
  def from_bytes(cls, data: bytes) -> "DepthRecord":
    """The inverse of to_bytes. Types and shapes are checked (`check_types`), not values: shards
    hold records validated when written. Raises RecordError (key, or "?" when unknown) on bytes
    that are not msgpack or a record of another schema; the reader adds the shard and index."""
    try:
      d = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack and flax's ext hooks raise many types on corrupt input
      raise RecordError("?", "record", f"not a msgpack-encoded DepthRecord ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
      raise RecordError("?", "record", f"expected a msgpack map of fields, got {_describe(d)}")
    key = d.get("key") if isinstance(d.get("key"), str) else "?"
    fields = {f.name: f for f in dataclasses.fields(cls)}
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in d]
    if missing:
      also = f" (and {', '.join(missing[1:])})" if len(missing) > 1 else ""
      raise RecordError(key, missing[0], f"missing{also}: a record of another schema?")
    unknown = sorted(str(n) for n in d if n not in fields)
    if unknown:
      raise RecordError(key, "record", f"unknown fields {unknown}; a record of another schema?")
    if not (isinstance(d["image"], np.ndarray) and d["image"].dtype == np.uint8 and d["image"].ndim == 1):
      raise RecordError(key, "image", f"expected uint8 bytes, got {_describe(d['image'])}")
    d["image"] = d["image"].tobytes()
    for name, n, kinds, cast in (("image_size", 2, "iu", int), ("depth_size", 2, "iu", int),
                                 ("intrinsics", 4, "iuf", float), ("depth_range", 2, "iuf", float)):
      a = d[name]
      if not (isinstance(a, np.ndarray) and a.shape == (n,) and a.dtype.kind in kinds):
        raise RecordError(key, name, f"expected {n} {'integers' if cast is int else 'numbers'}, got {_describe(a)}")
      d[name] = tuple(cast(x) for x in a)
    return cls(**d).check_types()


def dense_vs_points(depth: np.ndarray, points: np.ndarray, valid: Optional[np.ndarray] = None) -> Optional[str]:
  """Why a dense map and the same record's sparse points disagree, or None when they agree.

  Each point is compared with the map at its nearest pixel (points where the map has no valid
  depth are skipped). A point disagrees when the two differ by more than POINT_TOLERANCE; the
  record is refused when more than MAX_DISAGREEING of the compared points do. On the real
  DepthVLM-Bench fixtures every point equals its map (share 0, median ratio 1.000), while another
  frame's map disagrees at 40-100% of the points, and a 10x depth scale or an 8-bit re-save at all.
  """
  cols = np.clip(np.rint(points[:, 0]).astype(np.int64), 0, depth.shape[1] - 1)
  rows = np.clip(np.rint(points[:, 1]).astype(np.int64), 0, depth.shape[0] - 1)
  dense = depth[rows, cols].astype(np.float64)
  ok = dense > 0
  if valid is not None:
    ok &= valid[rows, cols]
  if not np.any(ok):
    return None
  ratio = dense[ok] / points[ok, 2]
  off = np.abs(ratio - 1) > POINT_TOLERANCE
  if off.mean() <= MAX_DISAGREEING:
    return None
  median = float(np.median(ratio))
  consistent = np.mean(np.abs(ratio / median - 1) <= POINT_TOLERANCE) >= 1 - MAX_DISAGREEING
  hint = (f"the map is consistently {median:.3g}x the points: a wrong depth scale, or a rescaled PNG?"
          if consistent else "the depth map of another frame, or an 8-bit or re-quantised PNG?")
  return (f"the dense map disagrees with the record's sparse points at {int(off.sum())} of {int(ok.sum())} "
          f"points (by more than {POINT_TOLERANCE:.0%}; at most {MAX_DISAGREEING:.0%} may), median dense/point "
          f"ratio {median:.3g}: {hint}")


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_real(x) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _describe(value) -> str:
  """A short description of an unexpected value, for messages."""
  if isinstance(value, np.ndarray):
    return f"{value.dtype} array of shape {list(value.shape)}"
  text = repr(value)
  return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def decode_rgb(data: bytes, key: str = "?") -> np.ndarray:
  """Encoded image -> [H, W, 3] uint8; raises RecordError on corrupt or truncated bytes."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      if im.mode in ("I;16", "I;16B", "I", "F"):
        a = np.asarray(im, np.float64)
        a = np.clip(a / max(a.max(), 1) * 255, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=-1)
      return np.asarray(im.convert("RGB"))
  except (OSError, ValueError, SyntaxError) as e:
    raise RecordError(key, "image", f"cannot decode the image bytes ({e})") from e


def encode_png(rgb: np.ndarray) -> bytes:
  """Lossless PNG at a low compression level: ~3x faster to write, ~20% larger."""
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def ray_to_z(ray: np.ndarray, cols: np.ndarray, rows: np.ndarray,
             intrinsics_at_depth: tuple[float, float, float, float]) -> np.ndarray:
  """Euclidean distance along the pixel's ray -> z-depth, with intrinsics at the depth map's
  resolution: z = r / sqrt(1 + ((u - cx)/fx)^2 + ((v - cy)/fy)^2)."""
  fx, fy, cx, cy = intrinsics_at_depth
  x = (np.asarray(cols, np.float64) - cx) / fx
  y = (np.asarray(rows, np.float64) - cy) / fy
  return (np.asarray(ray, np.float64) / np.sqrt(1.0 + x * x + y * y)).astype(np.float32)


def intrinsics_at(intrinsics, from_size, to_size) -> tuple[float, float, float, float]:
  """Rescale (fx, fy, cx, cy) from an image of size (W, H) to another size (pixel-centre
  convention: u' = (u + 0.5) * s - 0.5)."""
  fx, fy, cx, cy = intrinsics
  sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
  return fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5

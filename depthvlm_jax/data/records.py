"""The unified metric-depth record: one image, its z-depth (dense and/or sparse), its camera.

Every source (DepthVLM-Bench, DepthLM, NYUv2, KITTI, DIODE, ETH3D, synthetic scenes) becomes
this one schema at ingest, so nothing downstream knows where an image came from. Depth is
always z-depth in metres: ray-length sources are converted at ingest (`depth_source_type`
remembers which it was). Sparse points live at the depth map's own resolution.

Records are validated when built (`DepthRecord.validate`) and serialised with msgpack
(`to_bytes` / `from_bytes`) into ArrayRecord shards.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Optional

import numpy as np
from flax import serialization
from PIL import Image

DOMAINS = ("indoor", "outdoor", "mixed")
DEPTH_TYPES = ("z", "ray")


class RecordError(ValueError):
  """A record that cannot be used; the message names the record and the field."""

  def __init__(self, record: str, field: str, problem: str):
    super().__init__(f"record {record!r}, field {field!r}: {problem}")
    self.record, self.field, self.problem = record, field, problem


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
    """Raises RecordError naming the first bad field; returns self."""
    k = self.key

    def bad(field, problem):
      raise RecordError(k, field, problem)

    if not self.image:
      bad("image", "empty image bytes")
    for name in ("image_size", "depth_size"):
      size = getattr(self, name)
      if len(size) != 2 or min(size) <= 0:
        bad(name, f"must be (W, H) with positive sizes, got {size}")
    intr = np.asarray(self.intrinsics, np.float64)
    if intr.shape != (4,) or not np.all(np.isfinite(intr)):
      bad("intrinsics", f"must be 4 finite numbers (fx, fy, cx, cy), got {self.intrinsics}")
    if intr[0] <= 0 or intr[1] <= 0:
      bad("intrinsics", f"focal lengths must be positive, got fx={intr[0]}, fy={intr[1]}")
    if self.domain not in DOMAINS:
      bad("domain", f"must be one of {DOMAINS}, got {self.domain!r}")
    if self.depth_source_type not in DEPTH_TYPES:
      bad("depth_source_type", f"must be one of {DEPTH_TYPES}, got {self.depth_source_type!r}")
    lo, hi = self.depth_range
    if not (0 <= lo < hi):
      bad("depth_range", f"must satisfy 0 <= min < max, got {self.depth_range}")
    if self.depth is None and self.points is None:
      bad("depth", "a record needs a dense depth map, sparse points, or both")
    wd, hd = self.depth_size
    if self.depth is not None:
      d = self.depth
      if d.dtype != np.float32 or d.shape != (hd, wd):
        bad("depth", f"must be float32 [{hd}, {wd}] (depth_size is W, H), got {d.dtype} {list(d.shape)}")
      if not np.all(np.isfinite(d)) or np.any(d < 0):
        bad("depth", "contains NaN, inf or negative values; set unknown pixels to 0")
      if not np.any(self.valid_mask()):
        bad("valid", f"no pixel has a valid depth inside depth_range {self.depth_range}")
    if self.valid is not None and (self.valid.dtype != bool or self.valid.shape != (hd, wd)):
      bad("valid", f"must be bool [{hd}, {wd}], got {self.valid.dtype} {list(self.valid.shape)}")
    if self.points is not None:
      p = self.points
      if p.ndim != 2 or p.shape[1] != 3 or p.dtype != np.float32 or len(p) == 0:
        bad("points", f"must be non-empty float32 [N, 3] (col, row, z), got {p.dtype} {list(p.shape)}")
      if not np.all(np.isfinite(p)) or np.any(p[:, 2] <= 0):
        bad("points", "depths must be finite and positive")
      if np.any(p[:, 0] < 0) or np.any(p[:, 0] > wd - 1) or np.any(p[:, 1] < 0) or np.any(p[:, 1] > hd - 1):
        bad("points", f"coordinates fall outside the {wd}x{hd} depth map")
    return self

  def valid_mask(self) -> np.ndarray:
    """Dense validity: the stored mask (if any) and depth inside the dataset's range."""
    lo, hi = self.depth_range
    m = (self.depth > max(lo, 0.0)) & (self.depth <= hi)
    return m if self.valid is None else (m & self.valid)

  def decode_image(self) -> np.ndarray:
    """[H, W, 3] uint8 RGB (grayscale, RGBA and 16-bit images are converted)."""
    return decode_rgb(self.image, self.key)

  def to_bytes(self) -> bytes:
    d = dataclasses.asdict(self)
    d = {k: v for k, v in d.items() if v is not None}
    d["image"] = np.frombuffer(self.image, np.uint8)
    for name in ("image_size", "depth_size", "intrinsics", "depth_range"):
      d[name] = np.asarray(d[name], np.float64 if name in ("intrinsics", "depth_range") else np.int64)
    return serialization.msgpack_serialize(d)

  @classmethod
  def from_bytes(cls, data: bytes) -> "DepthRecord":
    d = serialization.msgpack_restore(data)
    d["image"] = d["image"].tobytes()
    d["image_size"] = tuple(int(x) for x in d["image_size"])
    d["depth_size"] = tuple(int(x) for x in d["depth_size"])
    d["intrinsics"] = tuple(float(x) for x in d["intrinsics"])
    d["depth_range"] = tuple(float(x) for x in d["depth_range"])
    return cls(**d)


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

"""Per-example image transforms: focal normalisation, crops, padding, targets, DepthLM's marker.

Pure functions of numpy arrays (randomness only through a passed `np.random.Generator`).

Pixel-centre convention (as `records.intrinsics_at`): pixel (col, row) covers
[col - 0.5, col + 0.5) x [row - 0.5, row + 0.5), so an image of width W spans [-0.5, W - 0.5]
and a resize by sx maps u to (u + 0.5) * sx - 0.5. Point coordinates are kept as floats in this
frame; the pixel holding a point is floor(u + 0.5). Nearest-neighbour resizes use the same
centres, so an upsampled depth map holds a point's depth at its pixel. Crops and padding
update the principal point with the window's offset.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from depthvlm_jax.data.records import RecordError, intrinsics_at

ARROW_COLOR = (255, 0, 0)


@dataclasses.dataclass(frozen=True)
class Example:
  """One image and its labels at one resolution.

  rgb: [H, W, 3] uint8. depth: [H, W] float32 metres or None (sparse only). valid: [H, W] bool
  or None (iff depth is None). points: [N, 3] float32 (col, row, z) in this image's pixel frame,
  or None. intrinsics: (fx, fy, cx, cy). pixel_mask: [H, W] bool, False on padding.
  """

  rgb: np.ndarray
  depth: Optional[np.ndarray]
  valid: Optional[np.ndarray]
  points: Optional[np.ndarray]
  intrinsics: tuple[float, float, float, float]
  pixel_mask: np.ndarray
  key: str = "?"

  @property
  def hw(self) -> tuple[int, int]:
    return self.rgb.shape[0], self.rgb.shape[1]


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
  """Source index of each output pixel for a centre-aligned nearest resize (exact integers)."""
  return np.minimum((2 * np.arange(n_out) + 1) * n_in // (2 * n_out), n_in - 1)


def _pixel(coords: np.ndarray) -> np.ndarray:
  return np.floor(coords + 0.5).astype(np.int64)


def focal_normalize(rgb: np.ndarray, depth: Optional[np.ndarray], valid: Optional[np.ndarray],
                    points: Optional[np.ndarray], intrinsics, depth_size: tuple[int, int],
                    canonical_fx: float = 1000.0, key: str = "?") -> Example:
  """Isotropic resize to focal length canonical_fx: s = canonical_fx / fx, new size
  (round(s * W), round(s * H)).

  RGB is resized bilinearly; the depth map and mask (at their own size `depth_size` (W, H),
  possibly smaller than the image) are resized nearest to the new image size, values unchanged.
  Sparse points (at the depth map's resolution) are rescaled from the depth map's size, not the
  image's (the DepthVLM release's bug). Intrinsics follow the size actually produced (per-axis
  W'/W, H'/H), so fx' = canonical_fx up to the rounding of the image size.
  """
  h, w = rgb.shape[:2]
  s = canonical_fx / float(intrinsics[0])
  new_w, new_h = max(1, int(round(s * w))), max(1, int(round(s * h)))
  if (new_w, new_h) != (w, h):
    rgb = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR))
  if depth is not None:
    rows, cols = _nearest_index(new_h, depth.shape[0]), _nearest_index(new_w, depth.shape[1])
    valid = np.ones(depth.shape, bool) if valid is None else valid
    depth, valid = depth[rows[:, None], cols[None, :]], valid[rows[:, None], cols[None, :]]
  if points is not None:
    wd, hd = depth_size
    points = np.asarray(points, np.float64).copy()
    points[:, 0] = (points[:, 0] + 0.5) * new_w / wd - 0.5
    points[:, 1] = (points[:, 1] + 0.5) * new_h / hd - 0.5
    points = points.astype(np.float32)
  return Example(rgb=rgb, depth=depth, valid=valid, points=points,
                 intrinsics=intrinsics_at(intrinsics, (w, h), (new_w, new_h)),
                 pixel_mask=np.ones((new_h, new_w), bool), key=key)


def window(example: Example, top: int, left: int, out_hw: tuple[int, int]) -> Example:
  """The [top, top + h) x [left, left + w) window (negative offsets pad above / to the left);
  parts beyond the image become padding (zero RGB and depth, invalid, pixel_mask False). Points
  outside are dropped."""
  h, w = out_hw
  ih, iw = example.hw
  r0, c0 = max(top, 0), max(left, 0)  # the part of the image inside the window
  r1, c1 = min(top + h, ih), min(left + w, iw)

  def take(a, fill):
    out = np.full((h, w) + a.shape[2:], fill, a.dtype)
    if r1 > r0 and c1 > c0:
      out[r0 - top:r1 - top, c0 - left:c1 - left] = a[r0:r1, c0:c1]
    return out

  points = example.points
  if points is not None:
    points = points - np.array([left, top, 0], np.float32)
    px = _pixel(points[:, :2])
    points = points[(px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)]
  fx, fy, cx, cy = example.intrinsics
  return dataclasses.replace(
      example, rgb=take(example.rgb, 0),
      depth=None if example.depth is None else take(example.depth, 0),
      valid=None if example.valid is None else take(example.valid, False),
      points=points, intrinsics=(fx, fy, cx - left, cy - top), pixel_mask=take(example.pixel_mask, False))


def flip_horizontal(example: Example) -> Example:
  """The mirror image: columns reversed, points and the principal point mirrored (cx' = W-1-cx).
  Depth values are unchanged, so the labels stay exact."""
  h, w = example.hw
  flip = lambda a: None if a is None else a[:, ::-1].copy()
  points = example.points
  if points is not None:
    points = points.copy()
    points[:, 0] = (w - 1) - points[:, 0]
  fx, fy, cx, cy = example.intrinsics
  return dataclasses.replace(example, rgb=flip(example.rgb), depth=flip(example.depth), valid=flip(example.valid),
                             points=points, intrinsics=(fx, fy, (w - 1) - cx, cy), pixel_mask=flip(example.pixel_mask))


def photometric(rgb: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
  """Random brightness, contrast, saturation, per-channel gain and noise (strength 0 = none):
  appearance changes that leave geometry, and so depth, alone."""
  x = rgb.astype(np.float32) / 255.0
  jitter = lambda: 1.0 + strength * rng.uniform(-1, 1)
  gray = x.mean(axis=-1, keepdims=True)
  x = gray + (x - gray) * jitter()  # saturation
  x = (x - x.mean()) * jitter() + x.mean()  # contrast
  x = x * jitter() * (1.0 + 0.5 * strength * rng.uniform(-1, 1, 3)).astype(np.float32)  # brightness, colour cast
  x = x + rng.normal(0.0, 0.03 * strength, x.shape).astype(np.float32)  # sensor noise
  return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def random_crop(example: Example, out_hw: tuple[int, int], rng: np.random.Generator) -> Example:
  """Training crop to a fixed size (static shapes); a smaller image is padded bottom/right."""
  (h, w), (oh, ow) = example.hw, out_hw
  return window(example, int(rng.integers(0, max(h - oh, 0) + 1)), int(rng.integers(0, max(w - ow, 0) + 1)),
                out_hw)


def center_crop(example: Example, out_hw: tuple[int, int]) -> Example:
  """Central window of a fixed size (e.g. a 1024 max edge for very large canonical images)."""
  (h, w), (oh, ow) = example.hw, out_hw
  return window(example, max(h - oh, 0) // 2, max(w - ow, 0) // 2, out_hw)


def principal_crop(example: Example, out_hw: tuple[int, int]) -> Example:
  """The window of a fixed size centred on the principal point (padding where the image ends).
  After focal normalisation a pixel's place in this window is then its ray's angle, the same in
  every image, which position embeddings can use: a floor or road at a given row is at a given
  depth for a given camera height."""
  cx, cy = example.intrinsics[2], example.intrinsics[3]
  h, w = out_hw
  return window(example, int(np.floor(cy + 0.5)) - h // 2, int(np.floor(cx + 0.5)) - w // 2, out_hw)


def depthlm_crop(example: Example, rng: np.random.Generator, width_range=(1000, 1400),
                 height_range=(700, 1200)) -> Example:
  """DepthLM's augmentation after focal normalisation: a window centred on the image with width
  and height uniform integers in the ranges (inclusive), capped by the image (never padded)."""
  h, w = example.hw
  ow = min(int(rng.integers(width_range[0], width_range[1] + 1)), w)
  oh = min(int(rng.integers(height_range[0], height_range[1] + 1)), h)
  return window(example, (h - oh) // 2, (w - ow) // 2, (oh, ow))


def pad_to_multiple(example: Example, multiple: int = 32) -> Example:
  """Pads bottom/right to multiples of `multiple` (the model needs H, W multiples of 32)."""
  h, w = example.hw
  return window(example, 0, 0, (-(-h // multiple) * multiple, -(-w // multiple) * multiple))


def pad_to_bucket(example: Example, buckets: Sequence[tuple[int, int]]) -> Example:
  """Pads bottom/right to the smallest-area bucket (H, W) that holds the image, so evaluation
  compiles once per bucket; raises ValueError when none does."""
  h, w = example.hw
  fits = [tuple(b) for b in buckets if b[0] >= h and b[1] >= w]
  if not fits:
    raise ValueError(f"image {example.key!r} of size {h}x{w} fits none of the buckets {list(buckets)}")
  return window(example, 0, 0, min(fits, key=lambda b: (b[0] * b[1], b)))


def depth_targets(example: Example, depth_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
  """(depth float32 [H, W], valid bool [H, W]): valid where measured, not padding and inside the
  dataset's range (min, max] (as `DepthRecord.valid_mask`). A sparse-only example gives an
  all-invalid map. Invalid depths are left as they are: mask before taking logs."""
  if example.depth is None:
    return np.zeros(example.hw, np.float32), np.zeros(example.hw, bool)
  lo, hi = depth_range
  d = example.depth.astype(np.float32)
  return d, example.valid & example.pixel_mask & (d > max(lo, 0.0)) & (d <= hi)


def arrow_pixels(x: int, y: int) -> list[tuple[int, int]]:
  """(col, row) of DepthLM's marker pointing right at (x, y): shaft (x-5..x-1, y), head
  (x-2, y±1), (x-3, y±2); (x, y) itself stays uncoloured."""
  return ([(x - i, y) for i in range(1, 6)]
          + [(x - 2, y - 1), (x - 2, y + 1), (x - 3, y - 2), (x - 3, y + 2)])


def draw_arrow(rgb: np.ndarray, x: int, y: int, color=ARROW_COLOR) -> np.ndarray:
  """A copy of rgb with the one-pixel-thick marker (red unless told); the whole arrow must fit."""
  h, w = rgb.shape[:2]
  if not (5 <= x < w and 2 <= y < h - 2):
    raise ValueError(f"arrow at ({x}, {y}) does not fit a {w}x{h} image")
  out = rgb.copy()
  cols, rows = zip(*arrow_pixels(x, y))
  out[list(rows), list(cols)] = color
  return out


def query_candidates(example: Example, border: int = 5, valid: Optional[np.ndarray] = None) -> np.ndarray:
  """Every labelled pixel >= border px from every edge of the real (unpadded) image, as float32
  [N, 3] (integer col, row, z-depth in metres): the dense `valid` pixels when a mask is given
  (any valid pixel is a label, as DepthLM samples them), else the sparse points. Raises
  RecordError when there is none."""
  rows, cols = np.flatnonzero(example.pixel_mask.any(axis=1)), np.flatnonzero(example.pixel_mask.any(axis=0))
  # The real (unpadded) image's extent; padding may lie on any side (principal-point windows).
  r0, r1 = (rows[0] + border, rows[-1] + 1 - border) if len(rows) else (0, 0)
  c0, c1 = (cols[0] + border, cols[-1] + 1 - border) if len(cols) else (0, 0)
  if valid is not None:
    inner = np.zeros_like(valid)
    inner[r0:max(r1, r0), c0:max(c1, c0)] = True
    rows, cols = np.nonzero(valid & inner)
    if not len(rows):
      raise RecordError(example.key, "valid", f"no valid depth pixel lies {border} px or more inside the image")
    return np.stack([cols, rows, example.depth[rows, cols]], axis=-1).astype(np.float32)
  if example.points is None or not len(example.points):
    raise RecordError(example.key, "points", "no labelled point to query")
  px = _pixel(example.points[:, :2])
  ok = (px[:, 0] >= c0) & (px[:, 0] < c1) & (px[:, 1] >= r0) & (px[:, 1] < r1)
  if not ok.any():
    raise RecordError(example.key, "points", f"no labelled point lies {border} px or more inside the image")
  return np.concatenate([px[ok], example.points[ok, 2:]], axis=-1).astype(np.float32)


def sample_query_point(example: Example, rng: np.random.Generator, border: int = 5,
                       valid: Optional[np.ndarray] = None) -> tuple[int, int, float]:
  """One of the `query_candidates`, uniformly: integer (x, y) and its z-depth in metres."""
  candidates = query_candidates(example, border, valid)
  x, y, z = candidates[rng.integers(len(candidates))]
  return int(x), int(y), float(z)


def normalize_pixels(rgb: np.ndarray) -> np.ndarray:
  """uint8 RGB -> float32 in [-1, 1], the Qwen3-VL processor's (x / 255 - 0.5) / 0.5."""
  return (rgb.astype(np.float32) / 255.0 - 0.5) / 0.5

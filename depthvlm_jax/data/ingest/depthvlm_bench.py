"""DepthVLM-Bench JSONL (one image a line, dense uint16 depth PNG + sparse points) -> DepthRecords.

Camera: the record gives only `original_fx`, at the RGB image's own size. fy defaults to fx
(square pixels) and the principal point to the image centre ((W-1)/2, (H-1)/2), unless the
record has `original_fy`, `original_cx`, `original_cy`. Dense depth is PNG / depth_scale
(0 = no measurement); `pixel_coords` are at the depth map's resolution.

Optional fields, as the benchmark uses them: `depth_format` "binary_float32" (ETH3D) for a raw
float32 depth file in metres, sized by the then required `original_depth_size`, instead of the
PNG ("png16", the default); `mask_valid_path` and `mask_transp_path` (iBims-1), mask images at
the depth map's size (nonzero = true), relative to depth_root: a pixel outside the valid mask or
inside the transparent one becomes invalid in the record's `valid`, its depth kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image

from depthvlm_jax.data.ingest import (dataset_info, depth_png, find_file, integers, jsonl_rows, load_image, located,
                                      naming, numbers, raw_float32, sparse_points, string)
from depthvlm_jax.data.records import DepthRecord, RecordError

DEPTH_FORMATS = ("png16", "binary_float32")


def records(jsonl_path, root=None, *, depth_root=None, dataset: Optional[str] = None,
            domain: Optional[str] = None, depth_range=None, split: str = "test") -> Iterator[DepthRecord]:
  """root: folder the `image` paths are relative to (default: the JSONL's folder);
  depth_root: the same for `depth_path` (default: root). dataset, domain, depth_range apply
  where the record does not name them (domain and range default to the benchmark's values)."""
  jsonl_path = Path(jsonl_path)
  root = jsonl_path.parent if root is None else Path(root)
  depth_root = root if depth_root is None else Path(depth_root)
  for loc, row in jsonl_rows(jsonl_path):
    with located(loc):
      rec = _record(row, loc, root, depth_root, dataset, domain, depth_range, split)
    yield rec


def _record(row, loc, root, depth_root, dataset, domain, depth_range, split) -> DepthRecord:
  name, domain, depth_range = dataset_info(row, loc, dataset, domain, depth_range)
  if row.get("depth_type", "z_depth") != "z_depth":
    raise RecordError(loc, "depth_type", f"only 'z_depth' is supported, got {row['depth_type']!r}")
  image_rel = string(row, "image", loc)
  key, scene, frame = naming(name, image_rel, str(row.get("scene_id") or ""))
  loc = f"{loc} [{key}]"  # from here on, errors name the record too
  image, image_size = load_image(find_file(root, image_rel, loc, "image"), loc)
  if row.get("original_rgb_size") is not None:
    declared = integers(row, "original_rgb_size", loc, (2,))
    if declared != image_size:
      raise RecordError(loc, "original_rgb_size", f"says {declared} but the image is {image_size} (W, H); "
                        "original_fx would not match the image")
  declared_depth = None
  if row.get("original_depth_size") is not None:
    declared_depth = integers(row, "original_depth_size", loc, (2,))
  depth = None
  if row.get("depth_path") not in (None, ""):
    depth = _dense_depth(find_file(depth_root, string(row, "depth_path", loc), loc, "depth_path"), row, loc,
                         declared_depth)
    depth_size = (depth.shape[1], depth.shape[0])
    if declared_depth is not None and declared_depth != depth_size:
      raise RecordError(loc, "original_depth_size", f"says {declared_depth} but the depth map is {depth_size} (W, H)")
    if declared_depth is None and depth_size != image_size:
      # An undeclared size difference more likely means a wrong pairing than a real one.
      raise RecordError(loc, "original_depth_size", f"missing, and the depth map {depth_size} differs "
                        f"from the image {image_size} (W, H)")
  else:
    depth_size = declared_depth or image_size
  points = None
  if row.get("pixel_coords") is not None:
    points = sparse_points(row, loc, depth_size).astype(np.float32)
  return DepthRecord(
      key=key, image=image, image_size=image_size, intrinsics=_intrinsics(row, loc, image_size),
      depth_size=depth_size, dataset=name, domain=domain, depth_range=depth_range, depth=depth,
      valid=_valid(row, loc, depth_root, depth_size), points=points, depth_source_type="z", scene_id=scene,
      frame_id=frame, split=split).validate()


def _intrinsics(row, loc, image_size) -> tuple[float, float, float, float]:
  fx = float(numbers(row, "original_fx", loc, ()))
  if fx <= 0:
    raise RecordError(loc, "original_fx", f"must be positive, got {fx}")
  fy = float(numbers(row, "original_fy", loc, ())) if row.get("original_fy") is not None else fx
  if fy <= 0:
    raise RecordError(loc, "original_fy", f"must be positive, got {fy}")
  w, h = image_size
  cx = float(numbers(row, "original_cx", loc, ())) if row.get("original_cx") is not None else (w - 1) / 2
  cy = float(numbers(row, "original_cy", loc, ())) if row.get("original_cy") is not None else (h - 1) / 2
  return fx, fy, cx, cy


def _dense_depth(path: Path, row, loc, declared_size) -> np.ndarray:
  """A binary_float32 file holds metres already: any depth_scale the record carries is neither
  applied nor checked (a record's dense-vs-points check still catches wrong values)."""
  fmt = row.get("depth_format", "png16")
  if fmt not in DEPTH_FORMATS:
    raise RecordError(loc, "depth_format", f"must be one of {list(DEPTH_FORMATS)}, got {fmt!r}")
  if fmt == "binary_float32":
    if declared_size is None:
      raise RecordError(loc, "original_depth_size", "required with depth_format 'binary_float32': a raw file "
                        "has no header to give its size")
    raw = raw_float32(path, declared_size, loc, "depth_path")
    # No measurement (inf, NaN, <= 0) becomes 0, as the PNGs store it.
    return np.where(np.isfinite(raw) & (raw > 0), raw, 0).astype(np.float32)
  scale = float(numbers(row, "depth_scale", loc, ()))
  if scale <= 0:
    raise RecordError(loc, "depth_scale", f"must be positive, got {scale}")
  return depth_png(path, scale, loc, "depth_path")


def _valid(row, loc, depth_root, depth_size) -> Optional[np.ndarray]:
  """Inside the valid mask and outside the transparent one (iBims-1), or None without masks."""
  masks = {field: _mask(find_file(depth_root, string(row, field, loc), loc, field), loc, field, depth_size)
           for field in ("mask_valid_path", "mask_transp_path") if row.get(field) not in (None, "")}
  if not masks:
    return None
  return masks.get("mask_valid_path", np.True_) & ~masks.get("mask_transp_path", np.False_)


def _mask(path: Path, loc, field, depth_size) -> np.ndarray:
  """A 1-bit or 8-bit mask image at the depth map's size, nonzero = true."""
  try:
    with Image.open(path) as im:
      im.load()
      mode, raw = im.mode, np.asarray(im)
  except (OSError, ValueError, SyntaxError) as e:
    raise RecordError(loc, field, f"cannot decode {path} ({e})") from e
  if mode not in ("1", "L"):
    raise RecordError(loc, field, f"{path}: expected a 1-bit or 8-bit single-channel mask, got mode {mode}")
  size = (raw.shape[1], raw.shape[0])
  if size != depth_size:
    raise RecordError(loc, field, f"{path} is {size} but the depth map is {depth_size} (W, H)")
  return raw != 0

"""DIODE (`<split>/<indoors|outdoor>/scene_x/scan_y/<name>.png`) -> DepthRecords.

Each image has `<name>_depth.npy` ([H, W, 1] float32 metres, from a laser scan) and
`<name>_depth_mask.npy` ([H, W], 1 = valid return). The devkit gives one pinhole camera for every
crop, fx 886.81, fy 927.06, cx 512, cy 384 at 1024x768 (intrinsics.txt); depths are treated as
z-depth, as the loaders that use that camera do. Domain comes from the folder; the range, 0.6-350 m,
is the scanner's (and what Marigold evaluates DIODE on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from depthvlm_jax.data.ingest import load_image, located
from depthvlm_jax.data.records import DepthRecord, RecordError, intrinsics_at

INTRINSICS = (886.81, 927.06, 512.0, 384.0)
CALIBRATION_SIZE = (1024, 768)
DEPTH_RANGE = (0.6, 350.0)
DOMAINS = {"indoors": "indoor", "outdoor": "outdoor"}


def records(path, root=None, *, depth_range=None, split: str = "test") -> Iterator[DepthRecord]:
  """path: a folder in the DIODE layout (the top folder, a split such as `val`, or deeper); every
  `*_depth.npy` below it is a record. root: the folder record keys are relative to (default: the
  one holding the split folders, found from the `indoors`/`outdoor` folder)."""
  path, root = Path(path), None if root is None else Path(root)
  depths = sorted(path.rglob("*_depth.npy"))
  if not depths:
    raise RecordError(str(path), "depth", "no *_depth.npy file below this folder")
  depth_range = tuple(float(x) for x in (depth_range or DEPTH_RANGE))
  for depth_path in depths:
    base = depth_path.with_name(depth_path.name.removesuffix("_depth.npy"))
    loc = str(base.with_name(base.name + ".png"))
    with located(loc):
      rec = _record(base, loc, root, depth_range, split)
    yield rec


def _record(base: Path, loc: str, root, depth_range, split) -> DepthRecord:
  folders = [i for i, part in enumerate(base.parts) if part in DOMAINS]
  if not folders:
    raise RecordError(loc, "domain", "no 'indoors' or 'outdoor' folder in the path to tell the domain")
  at = folders[-1]
  image_path = base.with_name(base.name + ".png")
  if not image_path.is_file():
    raise RecordError(loc, "image", f"file not found: {image_path}")
  image, size = load_image(image_path, loc)
  depth = _array(base.with_name(base.name + "_depth.npy"), loc, "depth", size)
  valid = _array(base.with_name(base.name + "_depth_mask.npy"), loc, "valid", size) > 0
  intrinsics = INTRINSICS if size == CALIBRATION_SIZE else intrinsics_at(INTRINSICS, CALIBRATION_SIZE, size)
  rel = base.relative_to(root) if root is not None else Path(*base.parts[max(at - 1, 0):])
  return DepthRecord(
      key=f"diode/{rel.as_posix()}", image=image, image_size=size, intrinsics=intrinsics, depth_size=size,
      dataset="diode", domain=DOMAINS[base.parts[at]], depth_range=depth_range, depth=depth.astype(np.float32),
      valid=valid, depth_source_type="z", scene_id=base.parts[at + 1] if at + 2 < len(base.parts) else "",
      frame_id=base.name, split=split).validate()


def _array(path: Path, loc: str, field: str, size) -> np.ndarray:
  """An [H, W] or [H, W, 1] numeric .npy at the image's (W, H), as [H, W]."""
  try:
    a = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise RecordError(loc, field, f"cannot read {path} ({e})") from e
  if a.ndim == 3 and a.shape[2] == 1:
    a = a[..., 0]
  if a.ndim != 2 or a.dtype.kind not in "uifb":
    raise RecordError(loc, field, f"{path}: expected a numeric [H, W] or [H, W, 1] array, got {a.dtype} "
                      f"{list(a.shape)}")
  if (a.shape[1], a.shape[0]) != size:
    raise RecordError(loc, field, f"{path} is {a.shape[1]}x{a.shape[0]} but the image is {size[0]}x{size[1]}")
  return a

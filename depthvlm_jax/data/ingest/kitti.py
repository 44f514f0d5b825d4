"""KITTI Eigen split (raw-data images, depth-benchmark ground truth) -> DepthRecords.

A split file lists one frame a line: the image's path under the raw data
(`2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png`, as in Eigen's list; further
columns are ignored) or monodepth2's `2011_09_26/2011_09_26_drive_0002_sync 69 l`. Ground truth is
the depth benchmark's `data_depth_annotated/{train,val}/<drive>/proj_depth/groundtruth/image_0X/
<frame>.png`: uint16, metres = value / 256, 0 = no measurement; accumulated LiDAR projected into the
rectified camera, so z-depth. It accumulates 11 scans, so the first and last 5 frames of each drive
have none: such lines are skipped and counted (strict=True refuses them). The camera is the rectified
one in `<date>/calib_cam_to_cam.txt`: P_rect_0X, for images of size S_rect_0X.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Iterator, Optional

import numpy as np
from absl import logging

from depthvlm_jax.data.ingest import depth_png, find_file, load_image, located, text_lines
from depthvlm_jax.data.records import DepthRecord, RecordError, intrinsics_at

DEPTH_RANGE = (0.001, 80.0)
CAMERAS = {"l": "image_02", "r": "image_03"}  # monodepth2's sides


def records(split_path, root=None, *, gt_root=None, strict: bool = False, depth_range=None,
            split: str = "test") -> Iterator[DepthRecord]:
  """root: the raw data (`<date>/calib_cam_to_cam.txt`, `<date>/<drive>/image_0X/data/`; default:
  the split file's folder). gt_root: the annotated depth maps, a folder holding `train/` and `val/`
  or the drive folders themselves (default: root)."""
  split_path = Path(split_path)
  root = split_path.parent if root is None else Path(root)
  gt_root = root if gt_root is None else Path(gt_root)
  depth_range = tuple(float(x) for x in (depth_range or DEPTH_RANGE))
  calibrations: dict[Path, dict[str, np.ndarray]] = {}
  lines = skipped = 0
  for n, line in text_lines(split_path, "image"):
    lines += 1
    loc = f"{split_path}:{n}"
    with located(loc):
      rec = _record(line.split(), loc, root, gt_root, strict, calibrations, depth_range, split)
    if rec is None:
      skipped += 1
      continue
    yield rec
  if skipped:
    logging.warning("%s: skipped %d of %d lines that have no ground truth under %s", split_path, skipped, lines,
                    gt_root)


def _record(tokens, loc, root, gt_root, strict, calibrations, depth_range, split) -> Optional[DepthRecord]:
  image_rel = _image_path(tokens, loc)
  parts = PurePosixPath(image_rel).parts
  if len(parts) != 5 or parts[3] != "data":
    raise RecordError(loc, "image", f"expected <date>/<drive>/image_0X/data/<frame>.png, got {image_rel!r}")
  date, drive, camera, _, name = parts
  stem = PurePosixPath(name).stem
  gt = next((p for p in (gt_root / s / drive / "proj_depth" / "groundtruth" / camera / f"{stem}.png"
                         for s in ("train", "val", "")) if p.is_file()), None)
  if gt is None:
    if strict:
      raise RecordError(loc, "depth", f"no ground truth for {drive}/{camera}/{stem} under {gt_root}")
    return None
  image, size = load_image(find_file(root, image_rel, loc, "image"), loc)
  depth = depth_png(gt, 256.0, loc, "depth")
  if (depth.shape[1], depth.shape[0]) != size:
    raise RecordError(loc, "depth", f"{gt} is {depth.shape[1]}x{depth.shape[0]} but the image is {size[0]}x{size[1]}")
  intrinsics = _intrinsics(root / date / "calib_cam_to_cam.txt", camera[-2:], size, loc, calibrations)
  return DepthRecord(
      key=f"kitti/{drive}/{camera}/{stem}", image=image, image_size=size, intrinsics=intrinsics, depth_size=size,
      dataset="kitti", domain="outdoor", depth_range=depth_range, depth=depth, depth_source_type="z",
      scene_id=drive, frame_id=f"{camera}/{stem}", split=split).validate()


def _image_path(tokens, loc) -> str:
  if len(tokens) == 3 and tokens[2] in CAMERAS:
    folder, frame, side = tokens
    try:
      return f"{folder}/{CAMERAS[side]}/data/{int(frame):010d}.png"
    except ValueError as e:
      raise RecordError(loc, "image", f"frame {frame!r} is not an integer") from e
  return tokens[0]



def _intrinsics(path: Path, cam: str, size, loc, cache) -> tuple[float, float, float, float]:
  """(fx, fy, cx, cy) from P_rect_<cam>, rescaled if the image is not S_rect_<cam> in size."""
  if path not in cache:
    if not path.is_file():
      raise RecordError(loc, "intrinsics", f"calibration file not found: {path}")
    values = {}
    for _, line in text_lines(path, "intrinsics"):
      name, _, rest = line.partition(":")
      try:
        values[name.strip()] = np.array(rest.split(), np.float64)
      except ValueError:  # calib_time is a date
        continue
    cache[path] = values
  p, s = cache[path].get(f"P_rect_{cam}"), cache[path].get(f"S_rect_{cam}")
  if p is None or p.shape != (12,) or s is None or s.shape != (2,):
    raise RecordError(loc, "intrinsics", f"{path} lacks P_rect_{cam} (12 numbers) or S_rect_{cam} (W H)")
  p = p.reshape(3, 4)
  intrinsics = (p[0, 0], p[1, 1], p[0, 2], p[1, 2])
  calibrated = (int(s[0]), int(s[1]))
  if calibrated != size:
    intrinsics = intrinsics_at(intrinsics, calibrated, size)
  return tuple(float(x) for x in intrinsics)

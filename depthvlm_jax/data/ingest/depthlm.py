"""DepthLM JSONL (one image a line, sparse labelled pixels, no dense map) -> DepthRecords.

A line holds `image`, `intrinsics` [fx, fy, cx, cy, W, H] at the image's size, `pixel_coords`
[[x, y], ...] and `depth` [metres]. The format does not say whether a depth is z-depth or
Euclidean ray length (DepthLM's curation mostly stores ray length, but z for nuScenes and
DDAD), so the caller must say: `depth_type="ray"` converts each point to z at ingest.
A record with fx <= 0 takes fy as fx, as DepthLM's release does; the ingest warns for each and
once at the end with their count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from absl import logging

from depthvlm_jax.data.ingest import (dataset_info, find_file, jsonl_rows, load_image, located, naming,
                                      numbers, sparse_points, string)
from depthvlm_jax.data.records import DEPTH_TYPES, DepthRecord, RecordError, ray_to_z


def records(jsonl_path, root=None, *, depth_type: str, dataset: Optional[str] = None,
            domain: Optional[str] = None, depth_range=None, split: str = "test") -> Iterator[DepthRecord]:
  """root: folder the `image` paths are relative to (default: the JSONL's folder).
  depth_type: "z" or "ray", what the JSONL's depths are. dataset, domain, depth_range apply
  where the record does not name them (domain and range default to the benchmark's values)."""
  if depth_type not in DEPTH_TYPES:
    raise ValueError(f"depth_type must be one of {DEPTH_TYPES}, got {depth_type!r}")
  jsonl_path = Path(jsonl_path)
  root = jsonl_path.parent if root is None else Path(root)
  used_fy = 0
  for loc, row in jsonl_rows(jsonl_path):
    with located(loc):
      rec, fell_back = _record(row, loc, root, depth_type, dataset, domain, depth_range, split)
    if fell_back:
      used_fy += 1
      logging.warning("%s [%s]: fx <= 0; used fy = %g (as DepthLM's release does)", loc, rec.key, rec.intrinsics[1])
    yield rec
  if used_fy:
    logging.warning("depthlm: %d record(s) had fx <= 0; used fy (as DepthLM's release does)", used_fy)


def _record(row, loc, root, depth_type, dataset, domain, depth_range, split) -> tuple[DepthRecord, bool]:
  """The record, and whether its fx was replaced by fy."""
  name, domain, depth_range = dataset_info(row, loc, dataset, domain, depth_range)
  image_rel = string(row, "image", loc)
  key, scene, frame = naming(name, image_rel, str(row.get("scene_id") or ""))
  loc = f"{loc} [{key}]"  # from here on, errors name the record too
  image, size = load_image(find_file(root, image_rel, loc, "image"), loc)
  intr = numbers(row, "intrinsics", loc)
  if intr.shape not in ((4,), (6,)):
    raise RecordError(loc, "intrinsics", f"expected [fx, fy, cx, cy, W, H], got {intr.tolist()}")
  if intr[1] <= 0:
    raise RecordError(loc, "intrinsics", f"focal lengths must be positive, got fx={intr[0]}, fy={intr[1]}")
  fell_back = bool(intr[0] <= 0)
  if fell_back:
    intr[0] = intr[1]
  if len(intr) == 6 and tuple(intr[4:]) != size:
    raise RecordError(loc, "intrinsics",
                      f"are for a {intr[4]:g}x{intr[5]:g} image but the image is {size[0]}x{size[1]}")
  intrinsics = tuple(float(x) for x in intr[:4])
  # No dense map: the depth grid is the image's own, so the points' intrinsics are these.
  points = sparse_points(row, loc, size)
  if depth_type == "ray":
    points[:, 2] = ray_to_z(points[:, 2], points[:, 0], points[:, 1], intrinsics)
  return DepthRecord(
      key=key, image=image, image_size=size, intrinsics=intrinsics, depth_size=size, dataset=name,
      domain=domain, depth_range=depth_range, points=points.astype(np.float32),
      depth_source_type=depth_type, scene_id=scene, frame_id=frame, split=split).validate(), fell_back

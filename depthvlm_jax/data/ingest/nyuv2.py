"""NYU Depth v2 labeled set (`nyu_depth_v2_labeled.mat`, 1449 Kinect frames) -> DepthRecords.

The official file is MATLAB v7.3, i.e. HDF5, read with h5py; HDF5 stores MATLAB's column-major
arrays with their axes reversed: `images` [N, 3, W, H] uint8, `depths` [N, W, H] float32. Copies
re-saved as MATLAB v5 are read with scipy in MATLAB's own order (`images` [H, W, 3, N]). `depths`
are the toolbox's in-painted maps (dense, after projection into the RGB camera), `rawDepths` the
Kinect's before in-painting (0 = no measurement); both are z-depth in metres. The camera is the
toolbox's RGB calibration (camera_params.m) for 640x480 frames, which the labeled frames are, already
undistorted. The Eigen crop is an evaluation choice and is not applied here.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Callable, Iterator, Optional

import h5py
import numpy as np
import scipy.io

from depthvlm_jax.data.ingest import DATASETS, located, naming
from depthvlm_jax.data.records import DepthRecord, RecordError, encode_png, intrinsics_at

# camera_params.m (fx_rgb, fy_rgb, cx_rgb, cy_rgb) and the size it was calibrated at.
INTRINSICS = (518.85790117450188, 519.46961112127485, 325.58244941119034, 253.73616633400465)
CALIBRATION_SIZE = (640, 480)
DEPTH_KEYS = ("depths", "rawDepths")


@dataclasses.dataclass
class _Frames:
  """Per-frame access to either layout, as [H, W, 3] uint8 RGB and [H, W] float32 depth."""

  count: int
  rgb: Callable[[int], np.ndarray]
  depth: Callable[[int], np.ndarray]
  scenes: Optional[list[str]]


def records(mat_path, root=None, *, indices=None, depth_key: str = "depths", depth_range=None,
            split: str = "test") -> Iterator[DepthRecord]:
  """mat_path: the labeled .mat file. indices: which frames, in order: 0-based indices, or a
  `splits.mat` file (relative to root, default the .mat's folder) whose 1-based `testNdxs`
  (`trainNdxs` when split is "train") are used, e.g. the 654 Eigen test frames; default all.
  depth_key: "depths" (in-painted, the usual benchmark ground truth) or "rawDepths"."""
  if depth_key not in DEPTH_KEYS:
    raise ValueError(f"depth_key must be one of {DEPTH_KEYS}, got {depth_key!r}")
  mat_path = Path(mat_path)
  root = mat_path.parent if root is None else Path(root)
  domain, default_range = DATASETS["nyuv2"]
  depth_range = tuple(float(x) for x in (depth_range or default_range))
  with contextlib.ExitStack() as stack:
    frames = _open(mat_path, depth_key, stack)
    if frames.scenes is not None and len(frames.scenes) != frames.count:
      raise RecordError(str(mat_path), "scenes", f"{len(frames.scenes)} names for {frames.count} images")
    chosen = range(frames.count) if indices is None else _indices(indices, root, split, frames.count, mat_path)
    for i in chosen:
      loc = f"{mat_path}[{i}]"
      with located(loc):
        rgb = frames.rgb(i)
        size = (rgb.shape[1], rgb.shape[0])
        intrinsics = INTRINSICS if size == CALIBRATION_SIZE else intrinsics_at(INTRINSICS, CALIBRATION_SIZE, size)
        key, scene, frame = naming("nyuv2", f"{i:04d}", frames.scenes[i] if frames.scenes else "")
        rec = DepthRecord(
            key=key, image=encode_png(rgb), image_size=size, intrinsics=intrinsics, depth_size=size,
            dataset="nyuv2", domain=domain, depth_range=depth_range, depth=frames.depth(i),
            depth_source_type="z", scene_id=scene, frame_id=frame, split=split).validate()
      yield rec


def _open(path: Path, depth_key: str, stack: contextlib.ExitStack) -> _Frames:
  loc = str(path)
  if not path.is_file():
    raise RecordError(loc, "file", "not found")
  if h5py.is_hdf5(path):
    f = stack.enter_context(h5py.File(path, "r"))
    images, depths = _variable(f, "images", loc), _variable(f, depth_key, loc)
    # Reversed axes: [N, 3, W, H] and [N, W, H].
    if images.ndim != 4 or images.shape[1] != 3:
      raise RecordError(loc, "images", f"expected [N, 3, W, H] uint8, got shape {list(images.shape)}")
    _same_frames(loc, depth_key, depths.shape, (images.shape[0], images.shape[2:]),
                 (depths.shape[0], depths.shape[1:]))
    scenes = [_hdf5_text(f, ref) for ref in f["scenes"][()].ravel()] if "scenes" in f else None
    return _Frames(images.shape[0], lambda i: np.ascontiguousarray(np.asarray(images[i], np.uint8).transpose(2, 1, 0)),
                   lambda i: np.ascontiguousarray(np.asarray(depths[i], np.float32).T), scenes)
  mat = _loadmat(path, "file")
  images, depths = _variable(mat, "images", loc), _variable(mat, depth_key, loc)
  # MATLAB order: [H, W, 3, N] and [H, W, N].
  if images.ndim != 4 or images.shape[2] != 3:
    raise RecordError(loc, "images", f"expected [H, W, 3, N] uint8, got shape {list(images.shape)}")
  _same_frames(loc, depth_key, depths.shape, (images.shape[-1], images.shape[1::-1]),
               (depths.shape[-1], depths.shape[1::-1]))
  scenes = [str(np.ravel(s)[0]) for s in mat["scenes"].ravel()] if "scenes" in mat else None
  return _Frames(images.shape[-1], lambda i: np.ascontiguousarray(images[..., i], np.uint8),
                 lambda i: np.ascontiguousarray(depths[..., i], np.float32), scenes)


def _loadmat(path: Path, field: str) -> dict:
  try:
    return scipy.io.loadmat(path)
  except (scipy.io.matlab.MatReadError, ValueError, TypeError, OSError, NotImplementedError) as e:
    raise RecordError(str(path), field, f"neither HDF5 (MATLAB v7.3) nor a MATLAB v5 file ({e})") from e


def _variable(container, name: str, loc: str):
  if name not in container:
    raise RecordError(loc, name, "missing")
  return container[name]


def _same_frames(loc: str, depth_key: str, depth_shape, images, depths):
  """The depth variable holds one map per image, at the image's size: (count, (W, H)) agree."""
  if len(depth_shape) != 3:
    raise RecordError(loc, depth_key, f"expected one depth map per image, got shape {list(depth_shape)}")
  if images[0] != depths[0]:
    raise RecordError(loc, depth_key, f"{depths[0]} depth maps for {images[0]} images")
  if tuple(images[1]) != tuple(depths[1]):
    raise RecordError(loc, depth_key, f"depth maps are {tuple(depths[1])} but images {tuple(images[1])} (W, H)")


def _hdf5_text(f, ref) -> str:
  """A MATLAB char array (uint16 codes) behind an HDF5 object reference, as text."""
  return "".join(chr(c) for c in np.asarray(f[ref][()]).ravel())


def _indices(indices, root: Path, split: str, count: int, mat_path: Path) -> list[int]:
  if isinstance(indices, (str, Path)):
    chosen = _split_indices(root / indices, "trainNdxs" if split == "train" else "testNdxs")
  else:
    chosen = [int(i) for i in indices]
  bad = [i for i in chosen if not 0 <= i < count]
  if bad:
    raise RecordError(str(mat_path), "indices", f"{bad[:5]} fall outside the file's {count} frames (0-based)")
  return chosen


def _split_indices(path: Path, name: str) -> list[int]:
  """A splits.mat vector of 1-based frame numbers, 0-based."""
  loc = str(path)
  if not path.is_file():
    raise RecordError(loc, "indices", "file not found")
  if h5py.is_hdf5(path):
    with h5py.File(path, "r") as f:
      values = np.asarray(_variable(f, name, loc)[()])
  else:
    values = _variable(_loadmat(path, "indices"), name, loc)
  return [int(v) - 1 for v in np.ravel(values)]

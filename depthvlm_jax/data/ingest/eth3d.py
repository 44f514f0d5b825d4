"""ETH3D high-res multi-view training scenes (DSLR) -> DepthRecords.

The ground truth (`<scene>_dslr_depth.7z`: `<scene>/ground_truth_depth/dslr_images/<image name>`) is a
raw little-endian float32 buffer, row-major, at the size of the *original (distorted)* image, +inf
where there is none; a value is the camera-frame z of the nearest laser point in that pixel (ETH3D
dataset-pipeline, GroundTruthCreator). Those images' camera (`dslr_calibration_jpg/`) is
THIN_PRISM_FISHEYE, which a pinhole record cannot hold, so records take ETH3D's undistorted images
(`images/dslr_images_undistorted/`, PINHOLE camera in `dslr_calibration_undistorted/`) and the depth is
resampled onto them: each undistorted pixel's ray goes through the distorted camera and takes the depth
of the pixel it lands in; z is unchanged, the two cameras sharing the pose. Calibrations are COLMAP
text, whose pixel centres sit at +0.5; a record's sit at integers.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Iterator, NamedTuple

import numpy as np

from depthvlm_jax.data.ingest import DATASETS, find_file, load_image, located, naming, raw_float32, text_lines
from depthvlm_jax.data.records import DepthRecord, RecordError, intrinsics_at

PARAMS = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "THIN_PRISM_FISHEYE": 12}
CHUNK_ROWS = 256  # rows of the resampling map computed at once, to bound memory on 24 MP images


class Camera(NamedTuple):
  model: str
  width: int
  height: int
  params: np.ndarray


def records(path, root=None, *, depth_range=None, split: str = "test") -> Iterator[DepthRecord]:
  """path: a scene folder (`images/`, `dslr_calibration_jpg/`, `dslr_calibration_undistorted/`) or a
  folder of them. root: where `<scene>/ground_truth_depth/` was extracted, if not in the scene folder."""
  path = Path(path)
  if not path.is_dir():
    raise RecordError(str(path), "image", "not a folder")
  scenes = [path] if (path / "images").is_dir() else sorted(p for p in path.iterdir() if (p / "images").is_dir())
  if not scenes:
    raise RecordError(str(path), "image", "neither a scene folder (with images/) nor a folder of them")
  domain, default_range = DATASETS["eth3d"]
  depth_range = tuple(float(x) for x in (depth_range or default_range))
  for scene in scenes:
    depth_dir = (scene if root is None else Path(root) / scene.name) / "ground_truth_depth" / "dslr_images"
    cameras, images = _calibration(scene / "dslr_calibration_undistorted")
    source_cameras, source_images = _calibration(scene / "dslr_calibration_jpg")
    source_by_file = {PurePosixPath(name).name: cam_id for name, cam_id in source_images.items()}
    maps: dict[tuple[int, int], np.ndarray] = {}  # resampling maps by (source, target) camera
    for name in sorted(images):
      loc = str(scene / "images" / name)
      with located(loc):
        file = PurePosixPath(name).name
        if file not in source_by_file:
          raise RecordError(loc, "intrinsics", f"{file} is not in {scene / 'dslr_calibration_jpg' / 'images.txt'}")
        ids = (source_by_file[file], images[name])
        source, target = _camera(source_cameras, ids[0], loc), _camera(cameras, ids[1], loc)
        if target.model not in ("PINHOLE", "SIMPLE_PINHOLE"):
          raise RecordError(loc, "intrinsics", f"the undistorted camera is {target.model}, not a pinhole")
        image, size = load_image(find_file(scene / "images", name, loc, "image"), loc)
        raw = _raw_depth(find_file(depth_dir, file, loc, "depth"), source, loc)
        if ids not in maps:
          maps[ids] = _source_pixels(source, target)
        depth = np.where(maps[ids] >= 0, raw.ravel()[np.maximum(maps[ids], 0)], 0.0)
        fx, fy, cx, cy = _pinhole(target)
        intrinsics, calibrated = (fx, fy, cx - 0.5, cy - 0.5), (target.width, target.height)
        if size != calibrated:
          intrinsics = intrinsics_at(intrinsics, calibrated, size)
        key, scene_id, frame = naming("eth3d", name, scene.name)
        rec = DepthRecord(
            key=key, image=image, image_size=size, intrinsics=tuple(float(x) for x in intrinsics),
            depth_size=calibrated, dataset="eth3d", domain=domain, depth_range=depth_range,
            depth=depth.reshape(target.height, target.width).astype(np.float32), depth_source_type="z",
            scene_id=scene_id, frame_id=frame, split=split).validate()
      yield rec


def _calibration(folder: Path) -> tuple[dict[int, tuple[int, Camera]], dict[str, int]]:
  """COLMAP text: {camera id: (line, Camera)} from cameras.txt, {image name: camera id} from
  images.txt (a header line per image, then its 2D points on the next line, possibly empty)."""
  cameras = {}
  for n, tokens in _lines(folder / "cameras.txt"):
    loc = f"{folder / 'cameras.txt'}:{n}"
    try:
      cam_id, model, width, height = int(tokens[0]), tokens[1], int(tokens[2]), int(tokens[3])
      params = np.array(tokens[4:], np.float64)
    except (IndexError, ValueError) as e:
      raise RecordError(loc, "intrinsics", f"expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[] ({e})") from e
    if model in PARAMS and len(params) != PARAMS[model]:
      raise RecordError(loc, "intrinsics", f"{model} takes {PARAMS[model]} parameters, got {len(params)}")
    cameras[cam_id] = (n, Camera(model, width, height, params))
  images, points_line = {}, 0
  for n, tokens in _lines(folder / "images.txt", keep_blank=True):
    if n == points_line or not tokens:
      continue
    if len(tokens) < 10 or not tokens[8].isdigit():
      raise RecordError(f"{folder / 'images.txt'}:{n}", "intrinsics",
                        "expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
    images[" ".join(tokens[9:])] = int(tokens[8])
    points_line = n + 1
  return cameras, images


def _lines(path: Path, keep_blank: bool = False):
  """(line number, tokens) of a COLMAP text file, comments left out."""
  if not path.is_file():
    raise RecordError(str(path), "intrinsics", "calibration file not found")
  for n, line in text_lines(path, "intrinsics", keep_blank):
    if not line.startswith("#"):
      yield n, line.split()


def _camera(cameras, cam_id: int, loc: str) -> Camera:
  if cam_id not in cameras:
    raise RecordError(loc, "intrinsics", f"camera {cam_id} is not in cameras.txt")
  n, cam = cameras[cam_id]
  if cam.model not in PARAMS:
    raise RecordError(loc, "intrinsics", f"camera {cam_id} (cameras.txt:{n}) has unsupported model {cam.model}")
  return cam


def _pinhole(cam: Camera) -> tuple[float, float, float, float]:
  p = cam.params
  return (p[0], p[0], p[1], p[2]) if cam.model == "SIMPLE_PINHOLE" else tuple(p[:4])


def _project(cam: Camera, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Normalised coordinates (X/Z, Y/Z) -> COLMAP pixel coordinates, as COLMAP's models do."""
  if cam.model != "THIN_PRISM_FISHEYE":
    fx, fy, cx, cy = _pinhole(cam)
    return fx * x + cx, fy * y + cy
  fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, sx1, sy1 = cam.params
  # The equidistant fisheye angle first, then radial, tangential and thin-prism terms on it.
  r = np.hypot(x, y)
  scale = np.where(r > 1e-12, np.arctan(r) / np.maximum(r, 1e-12), 1.0)
  u, v = x * scale, y * scale
  r2 = u * u + v * v
  radial = r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
  du = u * radial + 2 * p1 * u * v + p2 * (r2 + 2 * u * u) + sx1 * r2
  dv = v * radial + 2 * p2 * u * v + p1 * (r2 + 2 * v * v) + sy1 * r2
  return fx * (u + du) + cx, fy * (v + dv) + cy


def _source_pixels(source: Camera, target: Camera) -> np.ndarray:
  """For each pixel of the pinhole `target`, the flat index of the `source` pixel its ray lands in
  (pixel k spans [k, k + 1) in COLMAP coordinates), or -1 outside the source image."""
  fx, fy, cx, cy = _pinhole(target)
  x = (np.arange(target.width) + 0.5 - cx) / fx
  out = np.empty((target.height, target.width), np.int32)
  for top in range(0, target.height, CHUNK_ROWS):
    y = (np.arange(top, min(top + CHUNK_ROWS, target.height)) + 0.5 - cy) / fy
    u, v = _project(source, *np.meshgrid(x, y))
    col, row = np.floor(u), np.floor(v)
    inside = (col >= 0) & (col < source.width) & (row >= 0) & (row < source.height)
    out[top:top + len(y)] = np.where(inside, row * source.width + col, -1)
  return out.ravel()


def _raw_depth(path: Path, cam: Camera, loc: str) -> np.ndarray:
  """The float32 buffer at the distorted camera's size, +inf (no ground truth) as 0."""
  raw = raw_float32(path, (cam.width, cam.height), loc, "depth")
  bad = np.isnan(raw) | (raw < 0)
  if bad.any():
    raise RecordError(loc, "depth", f"{path}: {int(bad.sum())} NaN or negative values (only +inf marks no depth)")
  return np.where(np.isposinf(raw), 0.0, raw).astype(np.float32)

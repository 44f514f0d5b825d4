"""Pictures and point clouds of predictions."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image

from depthvlm_jax import outputs


def colorize(depth: np.ndarray, valid: np.ndarray | None = None, lo: float | None = None,
             hi: float | None = None) -> np.ndarray:
  """Depth [H, W] -> turbo RGB uint8 (near = red, far = blue); invalid pixels black."""
  valid = np.isfinite(depth) & (depth > 0) if valid is None else valid
  vals = depth[valid]
  lo = float(vals.min()) if lo is None and vals.size else (lo or 0.0)
  hi = float(vals.max()) if hi is None and vals.size else (hi or 1.0)
  t = 1.0 - np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
  rgb = (colormaps["turbo"](t)[..., :3] * 255).astype(np.uint8)
  rgb[~valid] = 0
  return rgb


def save_depth_panel(path: str, image: np.ndarray, gt: np.ndarray, gt_valid: np.ndarray, pred: np.ndarray) -> None:
  """RGB | ground truth | prediction side by side, one colour scale for both depths."""
  vals = gt[gt_valid]
  lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (float(pred.min()), float(pred.max()))
  panel = np.concatenate([image, colorize(gt, gt_valid, lo, hi), colorize(pred, None, lo, hi)], axis=1)
  with outputs.atomic_file(path) as f:
    Image.fromarray(panel).save(f, format="PNG")


def point_cloud(depth: np.ndarray, intrinsics, image: np.ndarray | None = None,
                valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
  """Back-projects z-depth with (fx, fy, cx, cy): points [N, 3] in metres (camera frame, x right,
  y down, z forward) and their colours [N, 3] uint8."""
  fx, fy, cx, cy = intrinsics
  h, w = depth.shape
  rows, cols = np.mgrid[0:h, 0:w]
  valid = (depth > 0) & np.isfinite(depth) if valid is None else valid
  z = depth[valid]
  pts = np.stack([(cols[valid] - cx) / fx * z, (rows[valid] - cy) / fy * z, z], axis=-1).astype(np.float32)
  return pts, None if image is None else image[valid]


def save_ply(path: str, points: np.ndarray, colors: np.ndarray | None = None) -> None:
  """Binary little-endian PLY (x, y, z float32 [+ red, green, blue uint8])."""
  n = len(points)
  props = "property float x\nproperty float y\nproperty float z\n"
  fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
  if colors is not None:
    props += "property uchar red\nproperty uchar green\nproperty uchar blue\n"
    fields += [("r", "u1"), ("g", "u1"), ("b", "u1")]
  data = np.empty(n, dtype=fields)
  data["x"], data["y"], data["z"] = points[:, 0], points[:, 1], points[:, 2]
  if colors is not None:
    data["r"], data["g"], data["b"] = colors[:, 0], colors[:, 1], colors[:, 2]
  header = f"ply\nformat binary_little_endian 1.0\nelement vertex {n}\n{props}end_header\n"
  with outputs.atomic_file(path) as f:
    f.write(header.encode("ascii"))
    f.write(data.tobytes())

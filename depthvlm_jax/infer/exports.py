"""Pictures and point clouds of predictions."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
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


def _range(depth: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
  vals = depth[valid]
  if not vals.size:
    return 0.0, 1.0
  lo, hi = float(vals.min()), float(vals.max())
  return lo, max(hi, lo + 1e-3)


def depth_figure(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None,
                 gt_valid: np.ndarray | None = None, title: str | None = None, dpi: int = 100) -> np.ndarray:
  """input | prediction [| ground truth | pred - gt] with colour bars in metres, as RGB uint8.

  Both depths share one turbo scale (near = red, as `colorize`) taken from the valid ground
  truth, else from the prediction, so a wrong scale shows as a colour shift. The error is signed
  (red: too far, blue: too near) because its sign tells more than AbsRel, which the panel's title
  gives. Pixels without a valid value are black.
  """
  pred = np.asarray(pred, np.float32)
  h, w = pred.shape
  pred_valid = np.isfinite(pred) & (pred > 0)
  if gt is not None:
    gt = np.asarray(gt, np.float32)
    gt_valid = np.isfinite(gt) & (gt > 0) & (True if gt_valid is None else np.asarray(gt_valid, bool))
  lo, hi = _range(gt, gt_valid) if gt is not None and gt_valid.any() else _range(pred, pred_valid)
  depth_cmap = colormaps["turbo_r"].with_extremes(bad="black")
  panels = [("input", image, {}, None), ("prediction", np.ma.masked_where(~pred_valid, pred),
            dict(cmap=depth_cmap, vmin=lo, vmax=hi), "depth (m)")]
  if gt is not None:
    both = gt_valid & pred_valid
    err = pred - gt
    absrel = float(np.mean(np.abs(err[both]) / gt[both])) if both.any() else float("nan")
    span = float(np.percentile(np.abs(err[both]), 99)) if both.any() else 0.0
    span = max(span, 1e-3)
    panels += [("ground truth", np.ma.masked_where(~gt_valid, gt), dict(cmap=depth_cmap, vmin=lo, vmax=hi),
                "depth (m)"),
               (f"pred \u2212 gt (AbsRel {absrel:.3f})", np.ma.masked_where(~both, err),
                dict(cmap=colormaps["RdBu_r"].with_extremes(bad="black"), vmin=-span, vmax=span), "error (m)")]

  # Fixed layout in inches (no tight/constrained layout: they cost more than the drawing).
  pw = float(np.clip(w / dpi, 2.0, 3.2))
  ph = pw * h / w
  cbar_w, cbar_pad, cbar_text, gap, left, bottom = 0.12, 0.06, 0.62, 0.12, 0.08, 0.08
  top = 0.32 + (0.3 if title else 0.0)
  widths = [pw + (cbar_pad + cbar_w + cbar_text if label else 0.0) for *_, label in panels]
  fw, fh = left + sum(widths) + gap * (len(panels) - 1) + 0.04, top + ph + bottom
  fig = Figure(figsize=(fw, fh), dpi=dpi)
  canvas = FigureCanvasAgg(fig)
  x = left
  for (name, data, style, label), width in zip(panels, widths):
    ax = fig.add_axes((x / fw, bottom / fh, pw / fw, ph / fh))
    im = ax.imshow(data, aspect="auto", interpolation="nearest", **style)
    fig.text((x + pw / 2) / fw, (bottom + ph + 0.06) / fh, name, fontsize=9, ha="center", va="bottom")
    ax.set_axis_off()
    if label:
      cax = fig.add_axes(((x + pw + cbar_pad) / fw, bottom / fh, cbar_w / fw, ph / fh))
      cb = fig.colorbar(im, cax=cax)
      cb.set_label(label, fontsize=8)
      cb.ax.tick_params(labelsize=7)
    x += width + gap
  if title:
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / fh, va="top")
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # no pyplot: nothing to close


def save_depth_figure(path, image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None,
                      gt_valid: np.ndarray | None = None, title: str | None = None, dpi: int = 100) -> None:
  """`depth_figure` as a PNG that replaces `path` only once complete."""
  rgb = depth_figure(image, pred, gt, gt_valid, title, dpi)
  with outputs.atomic_file(path) as f:
    Image.fromarray(rgb).save(f, format="PNG")


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

"""Pictures, 16-bit depth PNGs and point clouds of predictions."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from depthvlm_jax import outputs


_PANEL_INCHES = (2.0, 3.2)  # the width range of one picture panel in `depth_figure`


def _range(depth: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
  vals = depth[valid]
  if not vals.size:
    return 0.0, 1.0
  lo, hi = float(vals.min()), float(vals.max())
  return lo, max(hi, lo + 1e-3)


def depth_figure(image: np.ndarray | None, pred: np.ndarray, gt: np.ndarray | None = None,
                 gt_valid: np.ndarray | None = None, title: str | None = None, dpi: float = 100) -> np.ndarray:
  """[input |] prediction [| ground truth | pred - gt] with colour bars in metres, as RGB uint8.

  Both depths share one turbo scale (near = red, as `colorize`) taken from the valid ground
  truth, else from the prediction, so a wrong scale shows as a colour shift. The error is signed
  (red: too far, blue: too near) because its sign tells more than AbsRel, which the panel's title
  gives. Pixels without a valid value are black. Without `image` the input panel is left out
  (`save_depth_color`: the prediction alone).
  """
  pred = np.asarray(pred, np.float32)
  h, w = pred.shape
  pred_valid = np.isfinite(pred) & (pred > 0)
  if gt is not None:
    gt = np.asarray(gt, np.float32)
    gt_valid = np.isfinite(gt) & (gt > 0) & (True if gt_valid is None else np.asarray(gt_valid, bool))
  lo, hi = _range(gt, gt_valid) if gt is not None and gt_valid.any() else _range(pred, pred_valid)
  depth_cmap = colormaps["turbo_r"].with_extremes(bad="black")
  panels = [] if image is None else [("input", image, {}, None)]
  panels.append(("prediction", np.ma.masked_where(~pred_valid, pred), dict(cmap=depth_cmap, vmin=lo, vmax=hi),
                 "depth (m)"))
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
  pw = float(np.clip(w / dpi, *_PANEL_INCHES))
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


def save_depth_color(path, depth: np.ndarray, title: str | None = None, dpi: float | None = None) -> None:
  """The depth map alone in colour with its colour bar in metres, as a PNG (`depth_figure`'s
  prediction panel). dpi None draws the map at its own width kept within 320-2048 pixels: the
  text stays legible on small maps, and a 12-megapixel map takes seconds, not tens of them, to
  draw (it is a picture; `save_depth_png16` keeps the values)."""
  dpi = float(np.clip(np.shape(depth)[1] / _PANEL_INCHES[1], 100, 640)) if dpi is None else dpi
  rgb = depth_figure(None, depth, title=title, dpi=dpi)
  with outputs.atomic_file(path) as f:
    Image.fromarray(rgb).save(f, format="PNG")


MM_MAX = 65.535  # metres: the largest depth a 16-bit millimetre PNG holds


def save_depth_png16(path, depth_m: np.ndarray) -> None:
  """Depth [H, W] metres -> single-channel 16-bit PNG in millimetres (round(depth * 1000)), the
  usual RGB-D depth file, lossless to the millimetre; ingest reads it back with a depth scale of
  1000. 0 marks no depth (non-finite or <= 0). Depths beyond MM_MAX saturate at 65535 (read back
  as 65.535 m, not as invalid: far is still far), and valid depths under 0.5 mm are stored as
  1 mm so that they stay valid."""
  d = np.asarray(depth_m, np.float64)
  mm = np.where(np.isfinite(d) & (d > 0), np.clip(np.rint(d * 1000), 1, 65535), 0).astype(np.uint16)
  with outputs.atomic_file(path) as f:
    Image.fromarray(mm).save(f, format="PNG")


def load_depth_png16(path) -> np.ndarray:
  """A 16-bit millimetre depth PNG -> float32 metres [H, W]; 0 (no depth) stays 0. An 8-bit or
  colour PNG raises ValueError: it is a picture of depth, not depth."""
  with Image.open(path) as im:
    raw = np.asarray(im)
  if raw.ndim != 2 or raw.dtype.kind not in "ui" or raw.dtype.itemsize < 2:
    raise ValueError(f"{path}: expected a single-channel 16-bit depth PNG, got mode {im.mode} {list(raw.shape)}")
  return (raw.astype(np.float64) / 1000).astype(np.float32)


def point_cloud(depth: np.ndarray, intrinsics, image: np.ndarray | None = None,
                valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
  """Back-projects z-depth with intrinsics (fx, fy, cx, cy) in pixels at the map's size: points
  [N, 3] in metres (camera frame, x right, y down, z forward; pixel (col, row) at x / z * fx + cx
  = col, y / z * fy + cy = row) and their colours [N, 3] uint8 from `image`."""
  fx, fy, cx, cy = (float(v) for v in intrinsics)
  if not (fx > 0 and fy > 0):
    raise ValueError(f"focal lengths must be positive pixels, got fx={fx}, fy={fy}")
  h, w = depth.shape
  rows, cols = np.mgrid[0:h, 0:w]
  valid = (depth > 0) & np.isfinite(depth) if valid is None else valid
  z = depth[valid]
  pts = np.stack([(cols[valid] - cx) / fx * z, (rows[valid] - cy) / fy * z, z], axis=-1).astype(np.float32)
  return pts, None if image is None else image[valid]


def save_ply(path, points: np.ndarray, colors: np.ndarray | None = None) -> None:
  """Binary little-endian PLY (x, y, z float32 [+ red, green, blue uint8]), e.g. of `point_cloud`."""
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


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "<i2", "int16": "<i2",
              "ushort": "<u2", "uint16": "<u2", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
              "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8"}


def load_ply(path) -> tuple[np.ndarray, np.ndarray | None]:
  """Points [N, 3] float32 and colours [N, 3] uint8 (None without red / green / blue) of a binary
  little-endian PLY whose first element is the vertices, as `save_ply` writes (extra scalar
  vertex properties and later elements are skipped). Any other layout (ASCII, big-endian, list
  properties in the vertices, a truncated body) raises ValueError naming the file."""
  def refuse(problem: str) -> ValueError:
    return ValueError(f"{path}: {problem}; load_ply reads binary little-endian PLY vertices as save_ply writes them")

  with open(path, "rb") as f:
    if f.readline().rstrip(b"\r\n") != b"ply":
      raise refuse("not a PLY file (no 'ply' line first)")
    fmt, n, fields, element = None, None, [], None
    for line in iter(f.readline, b""):
      words = line.decode("ascii", "replace").split()
      if words == ["end_header"]:
        break
      if words[:1] == ["format"]:
        fmt = words[1:2]
      elif words[:1] == ["element"] and len(words) == 3 and words[2].isdigit():
        if element is None and words[1] != "vertex":
          raise refuse(f"the first element is {words[1]!r}, not 'vertex'")
        element = words[1]
        n = int(words[2]) if element == "vertex" else n
      elif words[:1] == ["property"] and element == "vertex":
        if len(words) != 3 or words[1] not in _PLY_TYPES:
          raise refuse(f"vertex property {' '.join(words[1:])!r} is not a scalar")
        fields.append((words[2], _PLY_TYPES[words[1]]))
      elif words[:1] not in ([], ["comment"], ["obj_info"], ["property"]):
        raise refuse(f"unexpected header line {line!r}")
    else:
      raise refuse("the header has no end_header line")
    if fmt != ["binary_little_endian"]:
      raise refuse(f"format {' '.join(fmt or ['missing'])}")
    names = [name for name, _ in fields]
    if n is None or not {"x", "y", "z"} <= set(names):
      raise refuse("no vertex element with x, y and z")
    dtype = np.dtype(fields)
    body = f.read(n * dtype.itemsize)
  if len(body) < n * dtype.itemsize:
    raise refuse(f"truncated: {len(body)} bytes of vertices, {n} vertices need {n * dtype.itemsize}")
  data = np.frombuffer(body, dtype)
  points = np.stack([data["x"], data["y"], data["z"]], axis=-1).astype(np.float32)
  rgb = ("red", "green", "blue")
  if not set(rgb) <= set(names):
    return points, None
  if any(dtype[c] != np.uint8 for c in rgb):
    raise refuse("colours are not uchar")
  return points, np.stack([data[c] for c in rgb], axis=-1)

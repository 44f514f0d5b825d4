"""Converters from public depth benchmark formats to DepthRecords, and what they share.

Each source has a module with a generator `records(path, root=None, **params)`; `run.py`
dispatches to them by name. Errors name the file and line, then the field: a converter turns
each JSONL line into a record inside `located(...)`, which adds the line to any RecordError.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional

import numpy as np
from PIL import Image

from depthvlm_jax.data.records import RecordError, decode_rgb

# Benchmark domains and depth ranges (metres), as DepthVLM-Bench evaluates them.
DATASETS = {
    "argoverse": ("outdoor", (0.05, 120.0)),
    "waymo": ("outdoor", (0.05, 70.0)),
    "nuscenes": ("outdoor", (0.05, 80.0)),
    "ddad": ("outdoor", (0.05, 120.0)),
    "eth3d": ("mixed", (0.01, 50.0)),
    "scannetpp": ("indoor", (0.001, 10.0)),
    "taskonomy": ("indoor", (0.005, 15.0)),
    "hm3d": ("indoor", (0.01, 10.0)),
    "matterport": ("indoor", (0.01, 10.0)),
    "sunrgbd": ("indoor", (0.005, 8.0)),
    "ibims": ("indoor", (0.005, 25.0)),
    "nyuv2": ("indoor", (0.005, 10.0)),
}


def jsonl_rows(path) -> Iterator[tuple[str, dict]]:
  """Yields ('file:line', row) for each non-blank line; a line that is not a JSON object fails."""
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      loc = f"{path}:{n}"
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise RecordError(loc, "json", f"not valid JSON ({e})") from e
      if not isinstance(row, dict):
        raise RecordError(loc, "json", f"expected a JSON object, got {type(row).__name__}")
      yield loc, row


@contextlib.contextmanager
def located(loc: str):
  """Prefixes RecordErrors raised deeper (which name only the record key) with 'file:line'."""
  try:
    yield
  except RecordError as e:
    if e.record == loc:
      raise
    raise RecordError(f"{loc} [{e.record}]", e.field, e.problem) from e


def require(row: dict, field: str, loc: str):
  if row.get(field) is None:
    raise RecordError(loc, field, "missing")
  return row[field]


def numbers(row: dict, field: str, loc: str, shape=None) -> np.ndarray:
  """A required numeric field as float64, refused when malformed, non-finite or misshapen."""
  value = require(row, field, loc)
  try:
    a = np.asarray(value, np.float64)
  except (TypeError, ValueError) as e:
    raise RecordError(loc, field, f"not numeric ({e})") from e
  if shape is not None and a.shape != shape:
    raise RecordError(loc, field, f"expected shape {list(shape)}, got {list(a.shape)}")
  if not np.all(np.isfinite(a)):
    raise RecordError(loc, field, f"contains NaN or inf: {a.tolist()}")
  return a


def sparse_points(row: dict, loc: str, size: tuple[int, int]) -> np.ndarray:
  """`pixel_coords` [[col, row], ...] and `depth` [metres] -> float64 [N, 3] (col, row, depth),
  refused when empty, mismatched, outside the W x H grid, or not positive and finite."""
  coords = numbers(row, "pixel_coords", loc)
  if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
    raise RecordError(loc, "pixel_coords",
                      f"expected a non-empty [[col, row], ...] list, got shape {list(coords.shape)}")
  depth = require(row, "depth", loc)
  try:
    depth = np.asarray(depth, np.float64)
  except (TypeError, ValueError) as e:
    raise RecordError(loc, "depth", f"not numeric ({e})") from e
  if depth.shape != (len(coords),):
    raise RecordError(loc, "depth",
                      f"expected {len(coords)} values (one per pixel_coords), got shape {list(depth.shape)}")
  bad = np.flatnonzero(~(np.isfinite(depth) & (depth > 0)))[:10]
  if len(bad):
    raise RecordError(loc, "depth", f"values must be finite and positive; at {bad.tolist()}: {depth[bad].tolist()}")
  w, h = size
  out = (coords[:, 0] < 0) | (coords[:, 0] > w - 1) | (coords[:, 1] < 0) | (coords[:, 1] > h - 1)
  if np.any(out):
    raise RecordError(loc, "pixel_coords", f"{coords[out][:5].tolist()} fall outside the {w}x{h} grid")
  return np.concatenate([coords, depth[:, None]], axis=1)


def find_file(root: Path, rel: str, loc: str, field: str) -> Path:
  path = root / rel
  if not path.is_file():
    raise RecordError(loc, field, f"file not found: {path}")
  return path


def load_image(path: Path, loc: str) -> tuple[bytes, tuple[int, int]]:
  """Encoded bytes and (W, H), decoded in full so that corrupt or truncated files fail here."""
  data = path.read_bytes()
  try:
    rgb = decode_rgb(data, str(path))
  except RecordError as e:
    raise RecordError(loc, "image", f"{path}: {e.problem}") from e
  return data, (rgb.shape[1], rgb.shape[0])


def depth_png(path: Path, scale: float, loc: str, field: str) -> np.ndarray:
  """Single-channel integer depth PNG / scale -> float32 metres (divided in float64, so values
  equal the published png / scale exactly); 0 stays 0 (no measurement)."""
  try:
    with Image.open(path) as im:
      im.load()
      raw = np.asarray(im)
  except (OSError, ValueError, SyntaxError) as e:
    raise RecordError(loc, field, f"cannot decode {path} ({e})") from e
  if raw.ndim != 2 or raw.dtype.kind not in "ui":
    raise RecordError(loc, field, f"{path}: expected a single-channel integer PNG, got {raw.dtype} {list(raw.shape)}")
  return (raw.astype(np.float64) / scale).astype(np.float32)


def dataset_info(row: dict, loc: str, dataset: Optional[str], domain: Optional[str],
                 depth_range) -> tuple[str, str, tuple[float, float]]:
  """(dataset, domain, depth_range): the record's own fields first, then the parameters, then
  the DATASETS table for the dataset's benchmark values."""
  name = row.get("dataset", dataset)
  if not name:
    raise RecordError(loc, "dataset", "the record has none and no dataset parameter was given")
  known = DATASETS.get(name)
  domain = row.get("domain", domain) or (known and known[0])
  if not domain:
    raise RecordError(loc, "domain", f"unknown dataset {name!r}: pass domain")
  rng = row.get("depth_range", depth_range) or (known and known[1])
  if not rng:
    raise RecordError(loc, "depth_range", f"unknown dataset {name!r}: pass depth_range")
  try:
    lo, hi = (float(x) for x in rng)
  except (TypeError, ValueError) as e:
    raise RecordError(loc, "depth_range", f"expected [min, max] in metres, got {rng!r}") from e
  return name, domain, (lo, hi)


def naming(dataset: str, image: str, scene: str) -> tuple[str, str, str]:
  """(key, scene_id, frame_id): f'{dataset}/{scene}/{frame}', the frame being the image's
  stem less a leading scene prefix; without a scene, the image's path less its suffix."""
  rel = PurePosixPath(image)
  frame = rel.stem
  if scene:
    frame = frame.removeprefix(f"{scene}_")
    return f"{dataset}/{scene}/{frame}", scene, frame
  return f"{dataset}/{str(rel.with_suffix('')).lstrip('/')}", "", frame

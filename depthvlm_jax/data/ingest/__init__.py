"""Converters from public depth benchmark formats to DepthRecords, and what they share.

Each source has a module with a generator `records(path, root=None, **params)`; `run.py`
dispatches to them by name. Errors name the file and line, then the field: a converter turns
each JSONL line into a record inside `located(...)`, which adds the line to any RecordError.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional

import numpy as np
from PIL import Image

from depthvlm_jax.data.records import RecordError, decode_rgb, located  # noqa: F401 (converters import it here)

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


def text_lines(path, field: str, keep_blank: bool = False) -> Iterator[tuple[int, str]]:
  """Yields (line number, text) for each (non-blank, unless keep_blank) line of a UTF-8 file.
  Lines are decoded one at a time, so that a stray non-UTF-8 byte (say a Latin-1 'é') is refused
  as RecordError('file:line', field), whatever the locale, not as a bare UnicodeDecodeError."""
  with open(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise RecordError(f"{path}:{n}", field, f"not UTF-8 text: byte 0x{raw[e.start]:02x} at column "
                          f"{e.start + 1} (a Latin-1 or cp1252 file? re-encode it as UTF-8)") from e
      if keep_blank or line.strip():
        yield n, line.rstrip("\r\n")


def jsonl_rows(path) -> Iterator[tuple[str, dict]]:
  """Yields ('file:line', row) for each non-blank line; a line that is not a JSON object fails."""
  for n, line in text_lines(path, "json"):
    loc = f"{path}:{n}"
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise RecordError(loc, "json", f"not valid JSON ({e})") from e
    if not isinstance(row, dict):
      raise RecordError(loc, "json", f"expected a JSON object, got {type(row).__name__}")
    yield loc, row


def require(row: dict, field: str, loc: str):
  if row.get(field) is None:
    raise RecordError(loc, field, "missing")
  return row[field]


def string(row: dict, field: str, loc: str) -> str:
  """A required text field (a path, a name): a number or a list there is a malformed record."""
  value = require(row, field, loc)
  if not isinstance(value, str) or not value:
    raise RecordError(loc, field, f"expected a non-empty string, got {type(value).__name__} {value!r}")
  return value


def _not_number(value):
  """The first leaf of a (nested) list that is not a JSON number, else None. A bool is not a
  number: numpy would silently read `true` as 1.0 (an fx of 1 px) and "2.5" as 2.5."""
  if isinstance(value, (list, tuple)):
    for x in value:
      leaf = _not_number(x)
      if leaf is not None:
        return leaf
    return None
  ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
  return None if ok else (value,)


def numbers(row: dict, field: str, loc: str, shape=None) -> np.ndarray:
  """A required numeric field as float64, refused when malformed (bools and strings included),
  non-finite or misshapen."""
  value = require(row, field, loc)
  leaf = _not_number(value)
  if leaf is not None:
    raise RecordError(loc, field, f"not numeric: {type(leaf[0]).__name__} {leaf[0]!r}")
  try:
    a = np.asarray(value, np.float64)
  except (TypeError, ValueError) as e:  # ragged nesting
    raise RecordError(loc, field, f"not numeric ({e})") from e
  if shape is not None and a.shape != shape:
    raise RecordError(loc, field, f"expected shape {list(shape)}, got {list(a.shape)}")
  if not np.all(np.isfinite(a)):
    raise RecordError(loc, field, f"contains NaN or inf: {a.tolist()}")
  return a


def integers(row: dict, field: str, loc: str, shape=None) -> tuple[int, ...]:
  """A required field of whole numbers (sizes), as ints: 1920.5 is refused, not truncated."""
  a = numbers(row, field, loc, shape)
  if np.any(a != np.round(a)):
    raise RecordError(loc, field, f"expected whole numbers, got {a.tolist()}")
  return tuple(int(x) for x in a.ravel())


def sparse_points(row: dict, loc: str, size: tuple[int, int]) -> np.ndarray:
  """`pixel_coords` [[col, row], ...] and `depth` [metres] -> float64 [N, 3] (col, row, depth),
  refused when empty, mismatched, outside the W x H grid, or not positive and finite."""
  coords = numbers(row, "pixel_coords", loc)
  if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
    raise RecordError(loc, "pixel_coords",
                      f"expected a non-empty [[col, row], ...] list, got shape {list(coords.shape)}")
  depth = numbers(row, "depth", loc)
  if depth.shape != (len(coords),):
    raise RecordError(loc, "depth",
                      f"expected {len(coords)} values (one per pixel_coords), got shape {list(depth.shape)}")
  bad = np.flatnonzero(~(depth > 0))[:10]
  if len(bad):
    raise RecordError(loc, "depth", f"values must be positive; at {bad.tolist()}: {depth[bad].tolist()}")
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
  """Single-channel 16-bit depth PNG / scale -> float32 metres (divided in float64, so values
  equal the published png / scale exactly); 0 stays 0 (no measurement). An 8-bit PNG is refused:
  benchmarks store 16 bits, as 255 steps / depth_scale (256-8000) reach at most 1 m, so an
  8-bit file is a visualisation or a lossy re-save, not the ground truth."""
  try:
    with Image.open(path) as im:
      im.load()
      raw = np.asarray(im)
  except (OSError, ValueError, SyntaxError) as e:
    raise RecordError(loc, field, f"cannot decode {path} ({e})") from e
  if raw.ndim != 2 or raw.dtype.kind not in "ui":
    raise RecordError(loc, field, f"{path}: expected a single-channel integer PNG, got {raw.dtype} {list(raw.shape)}")
  if raw.dtype.itemsize < 2:
    raise RecordError(loc, field, f"{path} is an 8-bit PNG (max {int(raw.max())}, i.e. {raw.max() / scale:g} m); "
                      "depth PNGs are 16-bit: a visualisation or a lossy re-save of the depth map?")
  return (raw.astype(np.float64) / scale).astype(np.float32)


def raw_float32(path: Path, size: tuple[int, int], loc: str, field: str) -> np.ndarray:
  """A headerless little-endian float32 file, row-major, as [H, W] for size (W, H). The byte
  count must match exactly: a buffer of another size would reshape into a sheared map."""
  w, h = size
  n, expected = path.stat().st_size, w * h * 4
  if n != expected:
    raise RecordError(loc, field, f"{path} holds {n} bytes, not the {w}x{h} float32 map ({expected} bytes)")
  return np.fromfile(path, "<f4").reshape(h, w)


def dataset_info(row: dict, loc: str, dataset: Optional[str], domain: Optional[str],
                 depth_range) -> tuple[str, str, tuple[float, float]]:
  """(dataset, domain, depth_range): the record's own fields first, then the parameters, then
  the DATASETS table for the dataset's benchmark values."""
  name = row.get("dataset", dataset)
  if not name:
    raise RecordError(loc, "dataset", "the record has none and no dataset parameter was given")
  if not isinstance(name, str):
    raise RecordError(loc, "dataset", f"expected a name, got {type(name).__name__} {name!r}")
  known = DATASETS.get(name)
  domain = row.get("domain", domain) or (known and known[0])
  if not domain:
    raise RecordError(loc, "domain", f"unknown dataset {name!r}: pass domain")
  rng = row.get("depth_range", depth_range)
  if rng is None and known:
    rng = known[1]
  if rng is None:
    raise RecordError(loc, "depth_range", f"unknown dataset {name!r}: pass depth_range")
  lo, hi = numbers({"depth_range": rng.tolist() if isinstance(rng, np.ndarray) else rng}, "depth_range", loc, (2,))
  return name, domain, (float(lo), float(hi))


def naming(dataset: str, image: str, scene: str) -> tuple[str, str, str]:
  """(key, scene_id, frame_id): f'{dataset}/{scene}/{frame}', the frame being the image's
  stem less a leading scene prefix; without a scene, the image's path less its suffix."""
  rel = PurePosixPath(image)
  frame = rel.stem
  if scene:
    frame = frame.removeprefix(f"{scene}_")
    return f"{dataset}/{scene}/{frame}", scene, frame
  return f"{dataset}/{str(rel.with_suffix('')).lstrip('/')}", "", frame

"""Prediction files: a predictor run over users' images or over ingested records.

  predict_images: each image -> STEM.npy (float32 metres at the image's size), STEM_depth.png
    (16-bit millimetres), STEM_color.png (colour, with a colour bar in metres), STEM.ply (the
    point cloud from the intrinsics, RGB colours) and STEM.txt (the model's reply).
  predict_records: each record -> OUT/<record key>.npy at the record's own image size, and depth
    pictures of the first ones.
Every file is written atomically; a bad image or record is skipped and counted (or raises).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

import numpy as np
from absl import logging

from depthvlm_jax import outputs
from depthvlm_jax.data import shards
from depthvlm_jax.data.records import RecordError, located
from depthvlm_jax.infer import camera, exports
from depthvlm_jax.infer.predictor import Predictor, intrinsics_of, load_rgb
from depthvlm_jax.train import report

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def image_paths(path) -> list[Path]:
  """One image, or every image of a folder (sorted)."""
  path = Path(path)
  if path.is_dir():
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
      raise FileNotFoundError(f"{path} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    stems = [p.stem for p in found]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:  # their outputs would overwrite each other
      raise ValueError(f"{path} holds several images named {twice} (another suffix): their outputs STEM.* would "
                       "collide; rename them or predict them one at a time")
    return found
  if not path.is_file():
    raise FileNotFoundError(f"no image at {path}")
  return [path]


def focal_length(path: Path, fx: Optional[float]) -> float:
  """--fx when given, else the image's EXIF focal length (said in the log); ValueError otherwise."""
  if fx:
    return fx
  found = camera.focal_from_exif(path)
  if found is None:
    raise ValueError(f"{path}: no --fx and no focal length in its EXIF. {camera.FX_HELP}")
  logging.info("%s: %s", path, found[1])
  return found[0]


def write_prediction(out: Path, stem: str, rgb: np.ndarray, pred) -> None:
  """The files of one image's prediction (depth files only when the model has a depth head)."""
  with outputs.atomic_file(out / f"{stem}.txt", "w") as f:
    f.write(pred.text + "\n")
  if pred.depth is None:
    return
  with outputs.atomic_file(out / f"{stem}.npy") as f:
    np.save(f, pred.depth)
  exports.save_depth_png16(out / f"{stem}_depth.png", pred.depth)
  exports.save_depth_color(out / f"{stem}_color.png", pred.depth, title=stem)
  points, colors = exports.point_cloud(pred.depth, pred.intrinsics, rgb)
  exports.save_ply(out / f"{stem}.ply", points, colors)


def predict_images(predictor: Predictor, paths: Sequence[Path], out: Path, fx: Optional[float] = None,
                   prompt: Optional[str] = None, on_bad_image: str = "skip") -> dict:
  """Predicts every image (same-bucket images share prefills) and writes its files."""
  progress = report.Progress(len(paths), every=predictor.settings.batch_size, batch_size=1)
  done, skipped, chunk = 0, 0, []

  def flush():
    preds = predictor.predict_many([(rgb, intr) for _, rgb, intr in chunk], prompt)
    for (path, rgb, _), pred in zip(chunk, preds):
      write_prediction(out, path.stem, rgb, pred)
    chunk.clear()

  for i, path in enumerate(paths):
    try:
      rgb = load_rgb(path)
      chunk.append((path, rgb, intrinsics_of(rgb.shape[:2], focal_length(path, fx))))
    except ValueError as e:
      if on_bad_image == "raise":
        raise
      logging.warning("skipping %s", e)
      skipped += 1
    if len(chunk) == predictor.settings.batch_size or (i == len(paths) - 1 and chunk):
      done += len(chunk)
      flush()
    progress.update(i + 1)
  if skipped:
    logging.warning("skipped %d of %d images (see the warnings above)", skipped, len(paths))
  return {"images": done, "skipped": skipped}


def record_path(out: Path, key: str) -> Path:
  """OUT/<key>.npy, with the key's folders, never outside OUT."""
  parts = [p for p in PurePosixPath(key).parts if p not in ("/", "..", ".")]
  return out.joinpath(*parts).with_suffix(".npy") if parts else out / "_.npy"


def predict_records(predictor: Predictor, data, out: Path, max_images: int = 0, pictures: int = 0,
                    on_bad_record: str = "skip") -> dict:
  """Depth for every record at its own image size, as OUT/<record key>.npy."""
  if not predictor.has_depth:
    raise ValueError("this model has no depth head (DepthLM): it answers questions about marked pixels; "
                     "score it with depthvlm-eval")
  source = shards.ShardSource(data)
  total = min(len(source), max_images) if max_images else len(source)
  progress = report.Progress(total, every=predictor.settings.batch_size, batch_size=1)
  done, skipped, pending = 0, 0, []

  def flush():
    nonlocal done
    preds = predictor.predict_many([(rgb, rec.intrinsics) for rec, rgb in pending], max_new_tokens=1)
    for (rec, rgb), pred in zip(pending, preds):
      path = record_path(out, rec.key)
      path.parent.mkdir(parents=True, exist_ok=True)
      with outputs.atomic_file(path) as f:
        np.save(f, pred.depth)
      if done < pictures:
        same = rec.depth is not None and rec.depth.shape == pred.depth.shape
        exports.save_depth_figure(out / f"picture_{done:03d}.png", rgb, pred.depth, rec.depth if same else None,
                                  rec.valid_mask() if same else None, title=rec.key)
      done += 1
    pending.clear()

  for i in range(total):
    raw = source[i]
    try:
      with located(raw.where):
        rec = raw.decode()
        pending.append((rec, rec.decode_image()))
    except RecordError as e:
      if on_bad_record == "raise":
        raise
      logging.warning("skipping a bad record: %s", e)
      skipped += 1
    if len(pending) == predictor.settings.batch_size or (i == total - 1 and pending):
      flush()
    progress.update(i + 1)
  if skipped:
    logging.warning("skipped %d of %d records that could not be used (see the warnings above)", skipped, total)
  if not done:
    raise RecordError(str(data), "records", f"nothing could be predicted: all {skipped} record(s) were bad"
                      if skipped else "nothing could be predicted: the data holds no record")
  return {"images": done, "skipped": skipped}

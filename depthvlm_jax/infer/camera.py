"""The focal length of a photo in pixels, for metric depth from images without calibration."""

from __future__ import annotations

import math
import os

from PIL import ExifTags, Image

FX_HELP = (
  "Metric depth needs the camera's focal length fx in pixels: the same scene photographed at twice the "
  "focal length looks like the scene at half the distance. The model sees images resized to one canonical "
  "focal length, so a wrong fx scales every depth by the same factor (fx 10% too large: depths 10% too "
  "far). Give --fx from the camera's calibration (e.g. OpenCV calibrateCamera on checkerboard photos), or "
  "from its 35 mm equivalent focal length f35 (in a phone's photo details / EXIF FocalLengthIn35mmFilm): "
  "fx = f35 / 36 * the image's long side in pixels.")

_UNIT_MM = {2: 25.4, 3: 10.0}  # EXIF FocalPlaneResolutionUnit: inch, centimetre
_INCH = 2  # the EXIF default when FocalPlaneResolutionUnit is absent


def _positive(value) -> float | None:
  try:
    value = float(value)
  except (TypeError, ValueError):
    return None
  return value if math.isfinite(value) and value > 0 else None


def focal_from_exif(image: str | os.PathLike | Image.Image) -> tuple[float, str] | None:
  """(fx in pixels, how it was found) from a photo's EXIF, or None without the tags for it.

  fx is for the image as stored, seen upright (EXIF Orientation 5-8 turn it by 90 degrees, so
  width and height swap, as viewers and `ImageOps.exif_transpose` show it); with square pixels,
  as nearly all cameras have, fx = fy, so it also holds for the unturned pixels.

  In order of preference:
  - FocalLengthIn35mmFilm f35: the focal length that gives the same view on a 36 x 24 mm film
    frame, taken here as the image's long side spanning 36 mm: fx = f35 / 36 * max(W, H). Makers
    that match the diagonal instead (43.3 mm) agree on 3:2 images but give a ~4% larger fx on
    4:3 ones, so depths from this fx can be off by that much.
  - FocalLength (mm) times the sensor's pixels per mm, FocalPlaneXResolution (per inch or
    centimetre, FocalPlaneResolutionUnit, inch when absent). That resolution counts the pixels
    of the full-size image (ExifImageWidth x ExifImageHeight), so a resized copy scales it by
    its long side over theirs (which also holds when software has turned the pixels).
  """
  if not isinstance(image, Image.Image):
    with Image.open(image) as im:
      return focal_from_exif(im)
  exif = image.getexif()
  tags = exif.get_ifd(ExifTags.IFD.Exif)
  w, h = image.size
  turned = exif.get(ExifTags.Base.Orientation) in (5, 6, 7, 8)
  if turned:
    w, h = h, w
  size = f"{w}x{h}" + (" (turned upright by its EXIF orientation)" if turned else "")

  f35 = _positive(tags.get(ExifTags.Base.FocalLengthIn35mmFilm))
  if f35:
    fx = f35 / 36 * max(w, h)
    return fx, f"EXIF FocalLengthIn35mmFilm {f35:g} mm -> fx {fx:.1f} px for {size}"

  f_mm = _positive(tags.get(ExifTags.Base.FocalLength))
  # The sensor axis along the upright image's width: y when turned (x when that is missing).
  axis = ExifTags.Base.FocalPlaneYResolution if turned else ExifTags.Base.FocalPlaneXResolution
  res = _positive(tags.get(axis)) or _positive(tags.get(ExifTags.Base.FocalPlaneXResolution))
  unit = tags.get(ExifTags.Base.FocalPlaneResolutionUnit, _INCH)
  if not (f_mm and res and unit in _UNIT_MM):
    return None
  per_mm = res / _UNIT_MM[unit]
  full = [_positive(tags.get(t)) for t in (ExifTags.Base.ExifImageWidth, ExifTags.Base.ExifImageHeight)]
  scale = max(w, h) / max(full) if all(full) else 1.0
  fx = f_mm * per_mm * scale
  scaled = f" x {scale:.4g} (resized from {full[0]:.0f}x{full[1]:.0f})" if scale != 1.0 else ""
  return fx, (f"EXIF FocalLength {f_mm:g} mm x {per_mm:.4g} px/mm on the sensor{scaled} -> fx {fx:.1f} px "
              f"for {size}")

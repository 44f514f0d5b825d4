"""Where a focal-normalised image sits in the model's input: a bucket of a few static sizes.

Images of any size are evaluated and predicted whole: each is padded (never cropped) into the
smallest bucket that holds it, so XLA compiles one program per bucket, not per image. A model
trained with windows centred on the principal point (`data.crop="principal"`) sees the image
placed the same way; any other model sees it in the top-left corner. The padding is black, as
in training, and is cut away again from the prediction.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from depthvlm_jax.data import transforms

PLACEMENTS = ("corner", "principal")


@dataclasses.dataclass(frozen=True)
class Canvas:
  """A normalised image in its bucket: `example` has the bucket's size; the image's own
  `hw` pixels start at (`top`, `left`) of it."""

  example: transforms.Example
  top: int
  left: int
  hw: tuple[int, int]

  def crop(self, a: np.ndarray) -> np.ndarray:
    """The image's part of a bucket-sized map."""
    return a[self.top:self.top + self.hw[0], self.left:self.left + self.hw[1]]


def needed_hw(hw: Sequence[int], intrinsics, placement: str) -> tuple[int, int]:
  """The smallest (H, W) that holds the whole image with this placement."""
  h, w = hw
  if placement == "corner":
    return h, w
  r, c = int(math.floor(intrinsics[3] + 0.5)), int(math.floor(intrinsics[2] + 0.5))
  # The image occupies rows [H//2 - r, H//2 - r + h): both ends must lie inside [0, H].
  size = lambda centre, n: max(2 * centre, 2 * (n - centre), n)
  return size(r, h), size(c, w)


def choose_bucket(need: Sequence[int], buckets: Sequence[Sequence[int]], multiple: int) -> tuple[int, int]:
  """The smallest-area listed bucket that holds `need`, else `need` rounded up to `multiple`."""
  fits = [tuple(int(x) for x in b) for b in buckets if b[0] >= need[0] and b[1] >= need[1]]
  if fits:
    return min(fits, key=lambda b: (b[0] * b[1], b))
  return tuple(-(-int(n) // multiple) * multiple for n in need)


def place(example: transforms.Example, buckets: Sequence[Sequence[int]], multiple: int,
          placement: str) -> Canvas:
  """The example padded into its bucket, with where the image lies in it."""
  if placement not in PLACEMENTS:
    raise ValueError(f"placement {placement!r}: use one of {PLACEMENTS}")
  bucket = choose_bucket(needed_hw(example.hw, example.intrinsics, placement), buckets, multiple)
  placed = (transforms.principal_crop(example, bucket) if placement == "principal"
            else transforms.window(example, 0, 0, bucket))
  rows, cols = placed.pixel_mask.any(axis=1), placed.pixel_mask.any(axis=0)  # where the image landed
  return Canvas(placed, int(rows.argmax()), int(cols.argmax()), example.hw)

"""Dense depth for images of any size, at their own resolution.

The image is focal-normalised (canonical fx, as in training) and seen through windows of the
training size (the only input size the model has seen; one compiled program for all images):
for a model trained with principal-point-centred windows, the one such window when it holds the
whole image; otherwise overlapping windows that tile it, their overlaps averaged. The map is then
resized back to the image's original size. Depth values are metres throughout: resizing never
scales them.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from depthvlm_jax.data import pipeline, text, transforms
from depthvlm_jax.model.vlm import DepthVLM
from depthvlm_jax.train.step import pixels_on_device


def window_starts(size: int, window: int) -> list[int]:
  """Starts of windows covering [0, size): evenly spaced, overlapping, the last flush with the end."""
  if size <= window:
    return [0]
  n = math.ceil(size / window) + 1
  return sorted({round(i * (size - window) / (n - 1)) for i in range(n)})


def resize_depth(depth: np.ndarray, size_wh: Sequence[int]) -> np.ndarray:
  """A float32 depth map bilinearly resized to (W, H); values stay metres."""
  w, h = size_wh
  if depth.shape == (h, w):
    return depth
  return np.asarray(Image.fromarray(depth, mode="F").resize((w, h), Image.BILINEAR), np.float32)


class DepthPredictor:
  """`predict(rgb, intrinsics)` -> depth [H, W] in metres at the image's own size."""

  def __init__(self, model: DepthVLM, params, image_hw: Sequence[int], canonical_fx: float, prompt: str,
               batch_size: int = 8, tokenizer: Optional[str] = None, crop: str = "random"):
    if model.cfg.depth_head is None:
      raise ValueError("the model has no depth head: dense prediction needs a DepthVLM checkpoint")
    self.params, self.hw, self.fx, self.batch_size = params, tuple(image_hw), float(canonical_fx), batch_size
    self.crop = crop
    tok = text.load_tokenizer(tokenizer)
    ids, _ = text.chat_tokens(tok, pipeline.num_image_tokens(self.hw), prompt)
    self.ids = jnp.broadcast_to(jnp.asarray(ids), (batch_size, len(ids)))
    self._forward = jax.jit(lambda p, ids, images: model.apply({"params": p}, ids, pixels_on_device(images)).depth)

  def _windows(self, ex: transforms.Example) -> list[tuple[int, int]]:
    nh, nw = ex.hw
    if self.crop == "principal":
      cx, cy = ex.intrinsics[2], ex.intrinsics[3]
      top, left = int(np.floor(cy + 0.5)) - self.hw[0] // 2, int(np.floor(cx + 0.5)) - self.hw[1] // 2
      if top <= 0 and left <= 0 and top + self.hw[0] >= nh and left + self.hw[1] >= nw:
        return [(top, left)]  # as in training: the principal point at the window's centre
    return [(t, l) for t in window_starts(nh, self.hw[0]) for l in window_starts(nw, self.hw[1])]

  def predict(self, rgb: np.ndarray, intrinsics) -> np.ndarray:
    """rgb uint8 [H, W, 3]; intrinsics (fx, fy, cx, cy) at this size -> float32 [H, W] metres."""
    return self.predict_many([(rgb, intrinsics)])[0]

  def predict_many(self, images: Sequence[tuple[np.ndarray, Sequence[float]]]) -> list[np.ndarray]:
    """Several images at once: their windows share full batches (one program, no idle rows)."""
    exs = []
    for rgb, intrinsics in images:
      h, w = rgb.shape[:2]
      exs.append(transforms.focal_normalize(rgb, None, None, None, intrinsics, (w, h), self.fx))
    wins = [(k, top, left) for k, ex in enumerate(exs) for top, left in self._windows(ex)]
    total = [np.zeros(ex.hw, np.float64) for ex in exs]
    count = [np.zeros(ex.hw, np.float64) for ex in exs]
    for i in range(0, len(wins), self.batch_size):
      chunk = wins[i:i + self.batch_size]
      batch = np.zeros((self.batch_size, *self.hw, 3), np.uint8)  # a full batch: one program
      for j, (k, top, left) in enumerate(chunk):
        batch[j] = transforms.window(exs[k], top, left, self.hw).rgb
      depth = np.asarray(jax.device_get(self._forward(self.params, self.ids, batch)))
      for j, (k, top, left) in enumerate(chunk):
        nh, nw = exs[k].hw
        r0, c0, r1, c1 = max(top, 0), max(left, 0), min(top + self.hw[0], nh), min(left + self.hw[1], nw)
        total[k][r0:r1, c0:c1] += depth[j, r0 - top:r1 - top, c0 - left:c1 - left]
        count[k][r0:r1, c0:c1] += 1
    return [resize_depth((t / n).astype(np.float32), (rgb.shape[1], rgb.shape[0]))
            for (rgb, _), t, n in zip(images, total, count)]

"""Dense depth for images of any size, at their own resolution.

The image is focal-normalised (canonical fx, as in training), covered by overlapping windows of
the training size (the only input size the model has seen; one compiled program for all
images), each window predicted in one prefill, the overlaps averaged, and the map resized back
to the image's original size. Depth values are metres throughout: resizing never scales them.
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


class DepthPredictor:
  """`predict(rgb, intrinsics)` -> depth [H, W] in metres at the image's own size."""

  def __init__(self, model: DepthVLM, params, image_hw: Sequence[int], canonical_fx: float, prompt: str,
               batch_size: int = 8, tokenizer: Optional[str] = None):
    if model.cfg.depth_head is None:
      raise ValueError("the model has no depth head: dense prediction needs a DepthVLM checkpoint")
    self.params, self.hw, self.fx, self.batch_size = params, tuple(image_hw), float(canonical_fx), batch_size
    tok = text.load_tokenizer(tokenizer)
    ids, _ = text.chat_tokens(tok, pipeline.num_image_tokens(self.hw), prompt)
    self.ids = jnp.broadcast_to(jnp.asarray(ids), (batch_size, len(ids)))
    self._forward = jax.jit(lambda p, ids, images: model.apply({"params": p}, ids, pixels_on_device(images)).depth)

  def predict(self, rgb: np.ndarray, intrinsics) -> np.ndarray:
    """rgb uint8 [H, W, 3]; intrinsics (fx, fy, cx, cy) at this size -> float32 [H, W] metres."""
    h, w = rgb.shape[:2]
    ex = transforms.focal_normalize(rgb, None, None, None, intrinsics, (w, h), self.fx)
    nh, nw = ex.hw
    wins = [(t, l) for t in window_starts(nh, self.hw[0]) for l in window_starts(nw, self.hw[1])]
    total = np.zeros((nh, nw), np.float64)
    count = np.zeros((nh, nw), np.float64)
    for i in range(0, len(wins), self.batch_size):
      chunk = wins[i:i + self.batch_size]
      images = np.zeros((self.batch_size, *self.hw, 3), np.uint8)  # a full batch: one program
      for j, (top, left) in enumerate(chunk):
        images[j] = transforms.window(ex, top, left, self.hw).rgb
      depth = np.asarray(jax.device_get(self._forward(self.params, self.ids, images)))
      for j, (top, left) in enumerate(chunk):
        bh, bw = min(self.hw[0], nh - top), min(self.hw[1], nw - left)
        total[top:top + bh, left:left + bw] += depth[j, :bh, :bw]
        count[top:top + bh, left:left + bw] += 1
    canonical = (total / count).astype(np.float32)
    if (nh, nw) == (h, w):
      return canonical
    return np.asarray(Image.fromarray(canonical, mode="F").resize((w, h), Image.BILINEAR), np.float32)

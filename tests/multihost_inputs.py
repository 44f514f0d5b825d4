"""The model and batch shared by the two-process test and its single-process reference."""

import numpy as np

from depthvlm_jax.model.config import get_config

CFG = get_config("tiny")


def inputs():
  """8 rows: text around one 64x96 image each."""
  n = (64 // 32) * (96 // 32)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 400, (8, n + 6)).astype(np.int32)
  ids[:, 3:3 + n] = CFG.image_token_id
  pixels = rng.uniform(-1, 1, (8, 64, 96, 3)).astype(np.float32)
  return ids, pixels

"""Rotary position embeddings: 2-D axial for the vision tower, interleaved M-RoPE for the LLM.

Also the 3-D (t, row, col) position ids of a token sequence with image placeholders, computed
with static shapes (no per-example Python), as `transformers`' `get_rope_index` defines them.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp


def vision_patch_rows_cols(grid_h: int, grid_w: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
  """(row, col) of every patch in the vision tower's token order.

  Patches are ordered by 2x2 merge block (block row, block col, row in block, col in block), so
  that four consecutive tokens form one LLM token.
  """
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  shape = (grid_h // merge, merge, grid_w // merge, merge)
  rows = rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
  cols = cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
  return rows, cols


def vision_rope(grid_h: int, grid_w: int, head_dim: int, theta: float, merge: int):
  """cos, sin of shape [N, head_dim]: the first half rotates by row, the second by column."""
  rows, cols = vision_patch_rows_cols(grid_h, grid_w, merge)
  spatial = head_dim // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(0, spatial, 2, dtype=jnp.float32) / spatial))
  fr = jnp.asarray(rows, jnp.float32)[:, None] * inv_freq
  fc = jnp.asarray(cols, jnp.float32)[:, None] * inv_freq
  freqs = jnp.concatenate([fr, fc], axis=-1)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def mrope_axis_of_frequency(head_dim: int, mrope_section) -> np.ndarray:
  """Which position axis (0=t, 1=row, 2=col) drives each rotary frequency (interleaved layout)."""
  j = np.arange(head_dim // 2)
  axis = np.zeros_like(j)
  axis[(j % 3 == 1) & (j < 3 * mrope_section[1])] = 1
  axis[(j % 3 == 2) & (j < 3 * mrope_section[2])] = 2
  return axis


def text_mrope(positions: jax.Array, head_dim: int, theta: float, mrope_section):
  """positions [3, B, L] -> cos, sin [B, L, head_dim] (float32)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  axis = mrope_axis_of_frequency(head_dim, mrope_section)
  pos = positions.astype(jnp.float32)[axis]  # [F, B, L]: the position each frequency reads
  freqs = jnp.moveaxis(pos, 0, -1) * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def mrope_positions(input_ids: jax.Array, attention_mask: jax.Array | None, image_token_id: int,
                    llm_grid_hw: tuple[int, int] | None) -> jax.Array:
  """3-D positions [3, B, L] for a batch whose images all share one merged grid (gh, gw).

  Text tokens advance one position per token on all three axes. An image block starting at
  position p gives its tokens (p, p + row, p + col); the text after it resumes at
  p + max(gh, gw). Padding tokens (attention_mask == 0) get position 0 and are not counted.
  """
  b, l = input_ids.shape
  valid = jnp.ones((b, l), bool) if attention_mask is None else attention_mask.astype(bool)
  if llm_grid_hw is None:
    text_pos = jnp.cumsum(valid, axis=1) - 1
    pos = jnp.where(valid, text_pos, 0)
    return jnp.broadcast_to(pos[None], (3, b, l)).astype(jnp.int32)
  gh, gw = llm_grid_hw
  per_image = gh * gw
  is_img = (input_ids == image_token_id) & valid
  is_txt = valid & ~is_img
  img_before = jnp.cumsum(is_img, axis=1) - is_img  # image tokens strictly before
  txt_before = jnp.cumsum(is_txt, axis=1) - is_txt
  blocks_before = img_before // per_image
  start = txt_before + blocks_before * max(gh, gw)
  local = img_before % per_image
  t = start
  h = jnp.where(is_img, start + local // gw, start)
  w = jnp.where(is_img, start + local % gw, start)
  pos = jnp.stack([t, h, w])
  return jnp.where(valid[None], pos, 0).astype(jnp.int32)

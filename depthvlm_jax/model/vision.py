"""Qwen3-VL vision tower: patchify, interpolated learned positions, 2-D RoPE blocks, mergers.

Images arrive as [B, H, W, 3] (H, W multiples of 32), already normalised like the HF
processor. Tokens are kept in 2x2-merge-block order throughout, so a merger is a reshape of
four consecutive tokens. The blocks are stacked with `nn.scan`, split into segments that end
at the DeepStack layers so that their hidden states leave the scan without storing every layer.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from depthvlm_jax.model import layers, rope
from depthvlm_jax.model.config import VisionConfig


def patchify(pixel_values: jax.Array, patch: int, temporal: int, merge: int) -> jax.Array:
  """[B, H, W, C] -> [B, N, C*T*P*P], byte-for-byte the HF processor's flattening.

  Each patch vector is ordered (channel, time, row, col) with the still image repeated
  `temporal` times; patches are ordered by merge block.
  """
  b, h, w, c = pixel_values.shape
  gh, gw = h // patch, w // patch
  x = pixel_values.reshape(b, gh // merge, merge, patch, gw // merge, merge, patch, c)
  x = x.transpose(0, 1, 4, 2, 5, 7, 3, 6)  # b, bh, bw, mh, mw, c, ph, pw
  x = jnp.broadcast_to(x[:, :, :, :, :, :, None], x.shape[:6] + (temporal,) + x.shape[6:])
  return x.reshape(b, gh * gw, c * temporal * patch * patch)


def position_interpolation(grid_h: int, grid_w: int, side: int, merge: int):
  """Indices [N, 4] and weights [N, 4] into the square position table, bilinear with
  align_corners=True, in token order (what HF's `get_vision_interpolation_indices_and_weights`
  computes). Static: depends only on the image size."""
  rows, cols = rope.vision_patch_rows_cols(grid_h, grid_w, merge)

  def taps(index, size):
    index = index.astype(np.float32)
    src = index * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    offs = np.arange(2)
    t = np.clip(floor[:, None].astype(np.int64) + offs, 0, side - 1)
    wgt = np.clip(1 - np.abs(src[:, None] - floor[:, None] - offs), 0, None).astype(np.float32)
    return t, wgt

  th, wh = taps(rows, grid_h)
  tw, ww = taps(cols, grid_w)
  idx = (th[:, :, None] * side + tw[:, None, :]).reshape(-1, 4)
  wgt = (wh[:, :, None] * ww[:, None, :]).reshape(-1, 4)
  return idx.astype(np.int32), wgt


class VisionMLP(nn.Module):
  cfg: VisionConfig
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.Dense(self.cfg.intermediate_size, ("vit_embed", "vit_mlp"), name="linear_fc1", **kw)(x)
    x = layers.gelu_tanh(x)
    return layers.Dense(self.cfg.hidden_size, ("vit_mlp", "vit_embed"), name="linear_fc2", **kw)(x)


class VisionAttention(nn.Module):
  cfg: VisionConfig
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x, cos, sin):
    b, n, d = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = layers.Dense(3 * d, ("vit_embed", "vit_qkv"), name="qkv", **kw)(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, self.cfg.num_heads, -1), 2, 0)
    q = layers.apply_rotary(q, cos[:, None], sin[:, None])
    k = layers.apply_rotary(k, cos[:, None], sin[:, None])
    out = layers.attention(q, k, v, impl=self.attention_impl).reshape(b, n, d)
    return layers.Dense(d, ("vit_heads", "vit_embed"), name="proj", **kw)(out)


class VisionBlock(nn.Module):
  cfg: VisionConfig
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x, rot):
    cos, sin = rot
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    eps = self.cfg.layer_norm_eps
    x = x + VisionAttention(self.cfg, name="attn", attention_impl=self.attention_impl, **kw)(
        layers.LayerNorm(eps, "vit_embed", name="norm1", **kw)(x), cos, sin)
    x = x + VisionMLP(self.cfg, name="mlp", **kw)(layers.LayerNorm(eps, "vit_embed", name="norm2", **kw)(x))
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
    return x, None


class PatchMerger(nn.Module):
  """2x2 merge + MLP to the LLM width. The final merger normalises each patch before the merge;
  the DeepStack mergers normalise the merged vector (`postshuffle_norm`)."""

  cfg: VisionConfig
  postshuffle_norm: bool
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    b, n, d = x.shape
    m2 = self.cfg.spatial_merge_size ** 2
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    eps = self.cfg.layer_norm_eps
    if self.postshuffle_norm:
      x = layers.LayerNorm(eps, "vit_merged", name="norm", **kw)(x.reshape(b, n // m2, d * m2))
    else:
      x = layers.LayerNorm(eps, "vit_embed", name="norm", **kw)(x).reshape(b, n // m2, d * m2)
    x = layers.Dense(d * m2, ("vit_merged", "vit_mlp"), name="linear_fc1", **kw)(x)
    x = layers.gelu_exact(x)
    return layers.Dense(self.cfg.out_hidden_size, ("vit_mlp", "embed"), name="linear_fc2", **kw)(x)


def block_segments(cfg: VisionConfig) -> list[tuple[int, int]]:
  """[start, end) block ranges, each but the last ending right after a DeepStack layer."""
  bounds = [i + 1 for i in cfg.deepstack_visual_indexes]
  if not bounds or bounds[-1] != cfg.depth:
    bounds.append(cfg.depth)
  starts = [0] + bounds[:-1]
  return list(zip(starts, bounds))


class VisionTower(nn.Module):
  """Returns (image embeddings [B, N/4, D_llm], DeepStack features: list of [B, N/4, D_llm])."""

  cfg: VisionConfig
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, pixel_values: jax.Array):
    cfg = self.cfg
    llm_grid(cfg, pixel_values.shape)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    gh, gw = pixel_values.shape[1] // cfg.patch_size, pixel_values.shape[2] // cfg.patch_size
    patches = patchify(pixel_values.astype(layers.dtype_of(self.dtype)), cfg.patch_size,
                       cfg.temporal_patch_size, cfg.spatial_merge_size)
    x = layers.Dense(cfg.hidden_size, ("vit_patch", "vit_embed"), name="patch_embed", **kw)(patches)

    side = int(round(cfg.num_position_embeddings ** 0.5))
    table = self.param("pos_embed", layers.logical(layers.default_kernel_init, ("vit_pos", "vit_embed")),
                       (cfg.num_position_embeddings, cfg.hidden_size), layers.dtype_of(self.param_dtype))
    idx, wgt = position_interpolation(gh, gw, side, cfg.spatial_merge_size)
    pos = jnp.sum(table[idx].astype(jnp.float32) * wgt[:, :, None], axis=1)
    x = x + pos.astype(x.dtype)[None]

    rot = rope.vision_rope(gh, gw, cfg.head_dim, cfg.rope_theta, cfg.spatial_merge_size)
    block = layers.maybe_remat(VisionBlock, self.remat_policy)
    deepstack = []
    for s, (start, end) in enumerate(block_segments(cfg)):
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=nn.broadcast, length=end - start,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(cfg, name=f"blocks_{s}", attention_impl=self.attention_impl, **kw)(x, rot)
      if end - 1 in cfg.deepstack_visual_indexes:
        k = cfg.deepstack_visual_indexes.index(end - 1)
        deepstack.append(PatchMerger(cfg, True, name=f"deepstack_merger_{k}", **kw)(x))
    merged = PatchMerger(cfg, False, name="merger", **kw)(x)
    return merged, deepstack


def llm_grid(cfg: VisionConfig, pixel_shape: Sequence[int]) -> tuple[int, int]:
  """The merged token grid (rows, cols) of images [B, H, W, C]; rejects sizes the tower can't take."""
  if len(pixel_shape) != 4 or pixel_shape[1] % cfg.token_size or pixel_shape[2] % cfg.token_size or (
      pixel_shape[3] != cfg.in_channels):
    raise ValueError(f"pixel_values has shape {tuple(pixel_shape)}; expected [B, H, W, {cfg.in_channels}] "
                     f"with H and W multiples of {cfg.token_size}")
  return pixel_shape[1] // cfg.token_size, pixel_shape[2] // cfg.token_size

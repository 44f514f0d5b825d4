"""Bilinear resize with align_corners=True (torch's F.interpolate), in O(output x C).

jax.image.resize uses half-pixel centres, hence this module. Each axis is a fixed linear map
whose every output reads two neighbouring inputs: two gathers with constant indices and a
weighted sum, so the cost grows with the output, not with output x input as a dense
interpolation matrix would (at a 992x1312 output that matrix product is ~150 GMAC).

The gradient is the transposed map, which is again a gather: the outputs that read one input
are a short contiguous run, so the transpose is written as a padded tap table (a few taps per
input) instead of the scatter-add that autodiff of a gather would produce (slow on TPU, atomics
on GPU). The transposed map's own transpose is the forward map, so higher derivatives stay
gathers too.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

HW = tuple[int, int]


def linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """([out, 2] input indices, [out, 2] weights) of 1-D align-corners linear interpolation.

  Source positions are computed in float32 as torch's CPU kernel does, so the weights are
  F.interpolate's own.
  """
  scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
  src = scale * np.arange(out_size, dtype=np.float32)
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = np.clip(src - lo.astype(np.float32), 0, 1)
  return np.stack([lo, hi], 1).astype(np.int32), np.stack([1 - frac, frac], 1).astype(np.float32)


def transpose_taps(idx: np.ndarray, w: np.ndarray, in_size: int) -> tuple[np.ndarray, np.ndarray]:
  """The tap table of the transposed map: for each input, the outputs that read it and how much.

  Rows are padded to the longest with weight 0 (index 0), so the table is a dense [in, K] array.
  """
  rows = [[] for _ in range(in_size)]
  for o, (ii, ww) in enumerate(zip(idx, w)):
    for i, wt in zip(ii, ww):
      if wt != 0:
        rows[i].append((o, wt))
  k = max(1, max(len(r) for r in rows))
  t_idx = np.zeros((in_size, k), np.int32)
  t_w = np.zeros((in_size, k), np.float32)
  for i, r in enumerate(rows):
    for j, (o, wt) in enumerate(r):
      t_idx[i, j], t_w[i, j] = o, wt
  return t_idx, t_w


def _apply(x: jax.Array, axis: int, idx: np.ndarray, w: np.ndarray) -> jax.Array:
  """y[..., o, ...] = sum_t w[o, t] * x[..., idx[o, t], ...] along `axis`."""
  shape = [1] * x.ndim
  shape[axis] = idx.shape[0]
  y = None
  for t in range(idx.shape[1]):
    term = jnp.take(x, jnp.asarray(idx[:, t]), axis=axis, mode="clip")
    term = term * jnp.asarray(w[:, t], x.dtype).reshape(shape)
    y = term if y is None else y + term
  return y


@functools.lru_cache(maxsize=None)
def _axis_map(in_size: int, out_size: int, axis: int, transposed: bool = False):
  """The 1-D resize along `axis` (or its transpose, out_size -> in_size) as a function whose
  VJP is the other one."""
  idx, w = linear_taps(in_size, out_size)
  if transposed:
    idx, w = transpose_taps(idx, w, in_size)

  @jax.custom_vjp
  def f(x):
    return _apply(x, axis, idx, w)

  f.defvjp(lambda x: (f(x), None),
           lambda _, g: (_axis_map(in_size, out_size, axis, not transposed)(g),))
  return f


def resize_bilinear_align_corners(x: jax.Array, out_hw: HW) -> jax.Array:
  """[B, H, W, C] -> [B, *out_hw, C], equal to torch's bilinear F.interpolate(align_corners=True)."""
  for axis, size in ((1, out_hw[0]), (2, out_hw[1])):
    if x.shape[axis] != size:
      x = _axis_map(x.shape[axis], size, axis)(x)
  return x

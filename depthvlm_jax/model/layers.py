"""Building blocks shared by the vision tower, the decoder and the depth head.

Every parameter is created through `nn.with_logical_partitioning` so that sharding is a
table lookup (depthvlm_jax/sharding.py), never a property of the module code.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

Axes = Sequence[Optional[str]]

default_kernel_init = nn.initializers.normal(stddev=0.02)


def logical(init, axes: Axes):
  return nn.with_logical_partitioning(init, tuple(axes))


def dtype_of(name: str):
  return jnp.dtype(name)


class Dense(nn.Module):
  """y = x @ W (+ b); W is [in, out] with logical axes `axes`. Params: `kernel`, `bias`."""

  features: int
  axes: Axes
  use_bias: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    pdt, cdt = dtype_of(self.param_dtype), dtype_of(self.dtype)
    kernel = self.param("kernel", logical(default_kernel_init, self.axes), (x.shape[-1], self.features), pdt)
    y = jnp.dot(x.astype(cdt), kernel.astype(cdt), precision=jax.lax.Precision.HIGHEST)
    if self.use_bias:
      bias = self.param("bias", logical(nn.initializers.zeros_init(), self.axes[-1:]), (self.features,), pdt)
      y = y + bias.astype(cdt)
    return y


class RMSNorm(nn.Module):
  """Qwen3 RMSNorm: statistics in float32, then cast back before the scale (as HF does)."""

  eps: float = 1e-6
  axis_name: Optional[str] = "norm"
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", logical(nn.initializers.ones_init(), (self.axis_name,)),
                       (x.shape[-1],), dtype_of(self.param_dtype))
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (scale.astype(dtype_of(self.dtype)) * y.astype(x.dtype)).astype(dtype_of(self.dtype))


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, statistics in float32. Params: `scale`, `bias`."""

  eps: float = 1e-6
  axis_name: Optional[str] = "norm"
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    pdt = dtype_of(self.param_dtype)
    scale = self.param("scale", logical(nn.initializers.ones_init(), (self.axis_name,)), (x.shape[-1],), pdt)
    bias = self.param("bias", logical(nn.initializers.zeros_init(), (self.axis_name,)), (x.shape[-1],), pdt)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(dtype_of(self.dtype))


def gelu_tanh(x):
  return jax.nn.gelu(x, approximate=True)


def gelu_exact(x):
  return jax.nn.gelu(x, approximate=False)


def rotate_half(x):
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x, cos, sin):
  """x: [..., L, H, D]; cos/sin broadcastable to [..., L, 1, D]. Computed in float32."""
  x32 = x.astype(jnp.float32)
  return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


ATTENTION_IMPLS = ("xla", "jax", "cudnn", "splash")
DEPTH_ACTIVATIONS = {"softplus": jax.nn.softplus, "exp": jnp.exp}  # the depth head's last output -> metres


class AttentionMask(NamedTuple):
  """Causal attention over keys with padding, kept structural rather than a dense bias because
  fused kernels take a causal flag and per-token ids, not an arbitrary [Lq, Lk] matrix.

  kv_valid [B, Lk]: the keys that are real tokens. q_offset None: the queries are the keys
  (query i sees keys <= i); with a KV cache, the (traced) slot of the first query.
  """

  kv_valid: jax.Array
  q_offset: Optional[jax.Array] = None

  def keep(self, lq: int) -> jax.Array:
    """[B, Lq, Lk] boolean: the keys each query attends to."""
    q_slot = jnp.arange(lq) + (0 if self.q_offset is None else self.q_offset)
    return (jnp.arange(self.kv_valid.shape[1])[None, :] <= q_slot[:, None])[None] & self.kv_valid[:, None, :]


def attention(q, k, v, mask: Optional[AttentionMask] = None, impl: str = "xla"):
  """Softmax attention with grouped KV heads; no mask: every query sees every key (vision).

  q: [B, Lq, Hq, D]; k, v: [B, Lk, Hkv, D].
  impl "xla": explicit einsums with a float32 softmax (the reference, any backend);
  "jax" / "cudnn": `jax.nn.dot_product_attention` with XLA's or cuDNN's fused kernel (GPU);
  "splash": the Pallas TPU kernel (interpreted elsewhere). KV-cache steps (mask.q_offset set)
  use the reference under "splash": its causal mask is static and the cache index is not.
  Masking uses large finite negatives, so queries with no visible key (padding) stay finite; their
  values differ between impls and mean nothing. Only real tokens' outputs agree.
  """
  if impl == "splash" and (mask is None or mask.q_offset is None):
    return _splash_attention(q, k, v, mask)
  if impl in ("jax", "cudnn"):
    return _dot_product_attention(q, k, v, mask, None if impl == "jax" else impl)
  b, lq, hq, d = q.shape
  hkv = k.shape[2]
  q = q.reshape(b, lq, hkv, hq // hkv, d)
  logits = jnp.einsum("bqkgd,bskd->bkgqs", q, k, precision=jax.lax.Precision.HIGHEST)
  logits = logits.astype(jnp.float32) * (d ** -0.5)
  if mask is not None:
    logits = logits + mask_to_bias(mask.keep(lq))[:, None, None]
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v, precision=jax.lax.Precision.HIGHEST)
  return out.reshape(b, lq, hq, d)


def _dot_product_attention(q, k, v, mask, implementation):
  """The causal part as `is_causal` (cuDNN then skips masked blocks), padding as a boolean mask
  spanning [B, 1, Lq, Lk] (cuDNN wants the full query/key extent). A cache step's causal mask is
  offset by the cache index, which `is_causal` cannot express, so it goes in whole."""
  b, lq, lk = q.shape[0], q.shape[1], k.shape[1]
  if mask is None:
    keep, causal = None, False
  elif mask.q_offset is None:
    keep, causal = jnp.broadcast_to(mask.kv_valid[:, None, None, :], (b, 1, lq, lk)), True
  else:
    keep, causal = mask.keep(lq)[:, None], False
  return jax.nn.dot_product_attention(q, k, v, mask=keep, is_causal=causal, implementation=implementation)


_SPLASH_LANES = 128  # the kernel's tiles are multiples of this along the sequence


def _splash_attention(q, k, v, mask: Optional[AttentionMask]):
  """Splash attention on [B, L, H, D]; queries are the keys.

  The length is padded to a multiple of 128 with the largest block (512/256/128) that divides it.
  Segment ids carry the padding (real tokens 1, padded and padding tokens 0), so real queries
  never see padding while every padding query still sees itself (splash needs no empty row).
  GQA is native: query head h reads KV head h // (Hq / Hkv). Under a mesh the kernel runs per
  shard (shard_map) over the batch and head axes of the logical rules.
  """
  b, l, _, d = q.shape
  lp = -(-l // _SPLASH_LANES) * _SPLASH_LANES
  block = next(s for s in (512, 256, _SPLASH_LANES) if lp % s == 0)
  causal = mask is not None
  segments = None
  if causal or lp != l:
    valid = jnp.ones((b, l), bool) if mask is None else mask.kv_valid
    segments = jnp.pad(valid, ((0, 0), (0, lp - l))).astype(jnp.int32)
  # [B, Lp, H, D] -> [B, H, Lp, D]; splash takes unscaled logits, so the scale goes on q.
  q, k, v = (jnp.pad(x, ((0, 0), (0, lp - l), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
             for x in (q * jnp.asarray(d ** -0.5, q.dtype), k, v))

  def kernel(q, k, v, segments):
    shape = (q.shape[2], k.shape[2])
    head_mask = splash.CausalMask(shape) if causal else splash.FullMask(shape)
    blocks = splash.BlockSizes(block_q=block, block_kv=block, block_q_dkv=block, block_kv_dkv=block,
                               block_q_dq=block, block_kv_dq=block)
    run = splash.make_splash_mha(splash.MultiHeadMask([head_mask] * q.shape[1]), block_sizes=blocks,
                                 head_shards=1, q_seq_shards=1, interpret=jax.default_backend() != "tpu")
    ids = None if segments is None else splash.SegmentIds(segments, segments)
    return jax.vmap(run)(q, k, v, segment_ids=ids)

  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    batch_axes, head_axes = nn.logical_to_mesh_axes(("activation_batch", "activation_heads"))
    batch_axes = _dividing(batch_axes, mesh, b)
    head_axes = _dividing(head_axes, mesh, q.shape[1], k.shape[1])
    qkv = P(batch_axes, head_axes)
    kernel = jax.shard_map(kernel, mesh=mesh, in_specs=(qkv, qkv, qkv, P(batch_axes)), out_specs=qkv,
                           check_vma=False)
  return kernel(q, k, v, segments).transpose(0, 2, 1, 3)[:, :l]


def _dividing(axes, mesh, *dims):
  """`axes` (mesh axis names) if their total size divides every dim, else None (replicated)."""
  names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
  size = math.prod(mesh.shape[a] for a in names)
  return axes if all(dim % size == 0 for dim in dims) else None


def mask_to_bias(mask: jax.Array) -> jax.Array:
  """Boolean keep-mask -> additive float32 bias."""
  return jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def maybe_remat(module_cls, policy: str, static_argnums=()):
  """Wraps a layer class in `nn.remat` unless the policy is "none"."""
  if policy == "none":
    return module_cls
  return nn.remat(module_cls, policy=REMAT_POLICIES[policy], prevent_cse=False,
                  static_argnums=static_argnums)

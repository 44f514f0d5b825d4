"""Building blocks shared by the vision tower, the decoder and the depth head.

Every parameter is created through `nn.with_logical_partitioning` so that sharding is a
table lookup (depthvlm_jax/sharding.py), never a property of the module code.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

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


ATTENTION_IMPLS = ("xla", "jax", "cudnn")


def attention(q, k, v, bias: Optional[jax.Array] = None, impl: str = "xla"):
  """Softmax attention with grouped KV heads.

  q: [B, Lq, Hq, D]; k, v: [B, Lk, Hkv, D]; bias: additive, broadcastable to [B, 1, Lq, Lk].
  impl "xla": explicit einsums with a float32 softmax (the reference, any backend);
  "jax" / "cudnn": `jax.nn.dot_product_attention` with XLA's or cuDNN's fused kernel (GPU).
  Masking uses the dtype minimum, not -inf, so fully masked rows (padding) stay finite.
  """
  b, lq, hq, d = q.shape
  hkv = k.shape[2]
  if impl != "xla":
    if bias is not None:
      bias = jnp.broadcast_to(bias, (b, 1, lq, k.shape[1])).astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation=None if impl == "jax" else impl)
  q = q.reshape(b, lq, hkv, hq // hkv, d)
  logits = jnp.einsum("bqkgd,bskd->bkgqs", q, k, precision=jax.lax.Precision.HIGHEST)
  logits = logits.astype(jnp.float32) * (d ** -0.5)
  if bias is not None:
    logits = logits + bias[:, :, None].astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v, precision=jax.lax.Precision.HIGHEST)
  return out.reshape(b, lq, hq, d)


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

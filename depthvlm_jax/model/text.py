"""Qwen3 decoder with interleaved M-RoPE, DeepStack injection and a functional KV cache.

The layers are one `nn.scan`, so compile time does not grow with depth. DeepStack features
arrive already scattered to sequence layout ([n_ds, B, L, D], zero at text tokens) and layer i
adds slice i while i < n_ds, which keeps every layer identical for the scan.

The KV cache is a plain pytree passed in and returned (no mutable collections), so prefill and
decode are pure functions that jit and shard like any other step.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from depthvlm_jax.model import layers
from depthvlm_jax.model.config import TextConfig


class KVCache(NamedTuple):
  """Keys/values of every layer, [layers, B, S, kv_heads, head_dim]; `valid` [B, S] marks filled
  non-padding slots; `index` is the next slot to write."""

  k: jax.Array
  v: jax.Array
  valid: jax.Array
  index: jax.Array

  @classmethod
  def zeros(cls, cfg: TextConfig, batch: int, max_len: int, dtype=jnp.float32) -> "KVCache":
    shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, max_len), bool),
               jnp.zeros((), jnp.int32))


class Attention(nn.Module):
  cfg: TextConfig
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x, cos, sin, mask, layer_cache, cache_index):
    cfg = self.cfg
    b, l, _ = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    hd, nq, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    q = layers.Dense(nq * hd, ("embed", "q_heads"), cfg.attention_bias, name="q_proj", **kw)(x)
    k = layers.Dense(nkv * hd, ("embed", "kv_heads"), cfg.attention_bias, name="k_proj", **kw)(x)
    v = layers.Dense(nkv * hd, ("embed", "kv_heads"), cfg.attention_bias, name="v_proj", **kw)(x)
    q = layers.RMSNorm(cfg.rms_norm_eps, "head_dim", name="q_norm", **kw)(q.reshape(b, l, nq, hd))
    k = layers.RMSNorm(cfg.rms_norm_eps, "head_dim", name="k_norm", **kw)(k.reshape(b, l, nkv, hd))
    v = v.reshape(b, l, nkv, hd)
    q = layers.apply_rotary(q, cos[:, :, None], sin[:, :, None])
    k = layers.apply_rotary(k, cos[:, :, None], sin[:, :, None])
    q = nn.with_logical_constraint(q, ("activation_batch", "activation_length", "activation_heads", None))
    if layer_cache is not None:
      ck, cv = layer_cache
      ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
      cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
      k, v, new_cache = ck.astype(q.dtype), cv.astype(q.dtype), (ck, cv)
    else:
      new_cache = None
    out = layers.attention(q, k, v, mask, self.attention_impl).reshape(b, l, nq * hd)
    return layers.Dense(cfg.hidden_size, ("q_heads", "embed"), cfg.attention_bias, name="o_proj", **kw)(out), new_cache


class MLP(nn.Module):
  cfg: TextConfig
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    gate = layers.Dense(self.cfg.intermediate_size, ("embed", "mlp"), False, name="gate_proj", **kw)(x)
    up = layers.Dense(self.cfg.intermediate_size, ("embed", "mlp"), False, name="up_proj", **kw)(x)
    h = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
    return layers.Dense(self.cfg.hidden_size, ("mlp", "embed"), False, name="down_proj", **kw)(h)


class DecoderLayer(nn.Module):
  cfg: TextConfig
  num_deepstack: int
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x, layer_in, cos, sin, mask, deepstack, cache_index):
    layer_idx, layer_cache = layer_in
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    eps = self.cfg.rms_norm_eps
    h, new_cache = Attention(self.cfg, name="self_attn", attention_impl=self.attention_impl, **kw)(
        layers.RMSNorm(eps, "embed", name="input_layernorm", **kw)(x), cos, sin, mask, layer_cache, cache_index)
    x = x + h
    x = x + MLP(self.cfg, name="mlp", **kw)(layers.RMSNorm(eps, "embed", name="post_attention_layernorm", **kw)(x))
    if deepstack is not None:
      slot = jnp.minimum(layer_idx, self.num_deepstack - 1)
      x = x + jnp.where(layer_idx < self.num_deepstack, deepstack[slot], 0).astype(x.dtype)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
    return x, new_cache


class Decoder(nn.Module):
  """Embedded inputs [B, L, D] -> final-normed hidden states [B, L, D] (+ updated cache)."""

  cfg: TextConfig
  num_deepstack: int
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x, cos, sin, mask: layers.AttentionMask, deepstack=None, cache: Optional[KVCache] = None):
    cfg = self.cfg
    layer = layers.maybe_remat(DecoderLayer, self.remat_policy)
    stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                    in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                    length=cfg.num_hidden_layers, metadata_params={nn.PARTITION_NAME: "layers"})
    idx = jnp.arange(cfg.num_hidden_layers)
    layer_caches = None if cache is None else (cache.k, cache.v)
    cache_index = None if cache is None else cache.index
    x, new_kv = stack(cfg, self.num_deepstack, name="layers", dtype=self.dtype, param_dtype=self.param_dtype,
                      attention_impl=self.attention_impl)(
        x, (idx, layer_caches), cos, sin, mask, deepstack, cache_index)
    x = layers.RMSNorm(cfg.rms_norm_eps, "embed", name="norm", dtype=self.dtype, param_dtype=self.param_dtype)(x)
    return x, new_kv

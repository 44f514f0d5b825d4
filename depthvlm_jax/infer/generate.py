"""Text generation with the KV cache: one prefill (which also yields the depth map), then a
jitted `lax.scan` of single-token decode steps. Greedy when temperature == 0, else sampled
(temperature, top-k, top-p). Rows may be left- or right-padded."""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from depthvlm_jax.model.text import KVCache
from depthvlm_jax.model.vlm import DepthVLM


class GenerateOutput(NamedTuple):
  tokens: jax.Array  # [B, max_new_tokens]; pad_token_id after an EOS
  depth: Optional[jax.Array]  # [B, H, W] from the prefill, None without a head/image
  first_logits: jax.Array  # [B, vocab]: the prefill's next-token distribution


def sample_token(logits: jax.Array, rng: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
  """logits [B, V] -> token ids [B]."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # keep a token while the mass strictly above it is < top_p (always keeps the best one)
    cutoff_idx = jnp.sum(jnp.cumsum(probs, axis=-1) - probs < top_p, axis=-1, keepdims=True) - 1
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k", "top_p",
                                             "eos_token_id", "pad_token_id", "cache_dtype",
                                             "with_depth"))
def generate(model: DepthVLM, params, input_ids, pixel_values=None, attention_mask=None, rng=None, *,
             max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             eos_token_id: Optional[int] = None, pad_token_id: int = 0, cache_dtype: str = "float32",
             with_depth: bool = True) -> GenerateOutput:
  b, l = input_ids.shape
  if attention_mask is None:
    attention_mask = jnp.ones((b, l), jnp.int32)
  rng = jax.random.key(0) if rng is None else rng
  cache = KVCache.zeros(model.cfg.text, b, l + max_new_tokens, jnp.dtype(cache_dtype))
  out = model.apply({"params": params}, input_ids, pixel_values, attention_mask, cache=cache, with_depth=with_depth)
  last = l - 1 - jnp.argmax(attention_mask[:, ::-1] > 0, axis=1)  # last real token, any padding side
  first_logits = jnp.take_along_axis(out.logits, last[:, None, None], axis=1)[:, 0]
  next_pos = jnp.max(jnp.where(attention_mask[None] > 0, out.positions, 0), axis=(0, 2)) + 1

  # Decode positions continue from each row's largest prompt position (HF's rope delta);
  # cache slots simply follow the prompt, padding stays masked.
  rng, step_rng = jax.random.split(rng)
  token = sample_token(first_logits, step_rng, temperature, top_k, top_p)
  done = jnp.zeros((b,), bool) if eos_token_id is None else token == eos_token_id

  def step(carry, i):
    cache, token, done, rng = carry
    pos = jnp.broadcast_to((next_pos + i)[None, :, None], (3, b, 1)).astype(jnp.int32)
    o = model.apply({"params": params}, token[:, None], None, jnp.ones((b, 1), jnp.int32),
                    positions=pos, cache=cache, with_depth=False)
    rng, sub = jax.random.split(rng)
    nxt = sample_token(o.logits[:, -1], sub, temperature, top_k, top_p)
    nxt = jnp.where(done, pad_token_id, nxt)
    new_done = done if eos_token_id is None else done | (nxt == eos_token_id)
    return (o.cache, nxt, new_done, rng), nxt

  _, rest = jax.lax.scan(step, (out.cache, token, done, rng), jnp.arange(max_new_tokens - 1))
  tokens = jnp.concatenate([token[:, None], rest.T], axis=1)
  return GenerateOutput(tokens=tokens, depth=out.depth, first_logits=first_logits)

"""DepthVLM: Qwen3-VL whose prefill also returns a full-resolution metric depth map.

With `depth_head=None` in the config this is the unmodified Qwen3-VL that DepthLM fine-tunes.
One image per sequence (all images of a batch share a size, as the pipeline guarantees); its
(H/t)*(W/t) placeholder tokens (t = cfg.vision.token_size, 32 for Qwen3-VL) receive the merged
vision embeddings in order.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from depthvlm_jax.model import layers, rope, vision
from depthvlm_jax.model.config import ModelConfig
from depthvlm_jax.model.depth_head import make_depth_head
from depthvlm_jax.model.text import Decoder, KVCache


@flax.struct.dataclass
class VLMOutput:
  logits: jax.Array  # [B, L, vocab]
  depth: Optional[jax.Array]  # [B, H, W] metres, None without a depth head or image
  positions: jax.Array  # [3, B, L] M-RoPE positions used
  cache: Optional[KVCache] = None
  hidden: Optional[jax.Array] = None  # [B, L, D] final-normed hidden states


def image_token_positions(input_ids: jax.Array, image_token_id: int, num_tokens: int) -> jax.Array:
  """[B, num_tokens] indices of the image placeholders of each row (static shape)."""
  return jax.vmap(lambda row: jnp.nonzero(row == image_token_id, size=num_tokens, fill_value=0)[0])(input_ids)


def scatter_image_tokens(input_ids, image_token_id, seq, image):
  """Puts image features [B, N, D] at the placeholder positions of seq [B, L, D]."""
  is_img = input_ids == image_token_id
  slot = jnp.clip(jnp.cumsum(is_img, axis=1) - 1, 0, image.shape[1] - 1)
  gathered = jnp.take_along_axis(image, slot[..., None], axis=1)
  return jnp.where(is_img[..., None], gathered.astype(seq.dtype), seq)


def check_placeholders(input_ids, image_token_id: int, num_tokens: int) -> None:
  """Eager check (skipped under tracing) that every row has exactly one image's placeholders."""
  if isinstance(input_ids, jax.core.Tracer):
    return
  counts = np.sum(np.asarray(input_ids) == image_token_id, axis=1)  # numpy: never staged into a trace
  bad = [i for i, c in enumerate(counts) if int(c) != num_tokens]
  if bad:
    raise ValueError(
        f"input_ids rows {bad} have {[int(counts[i]) for i in bad]} image placeholder tokens "
        f"(id {image_token_id}); each row needs exactly {num_tokens}, one per token of its image")


class DepthVLM(nn.Module):
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    run = dict(remat_policy=cfg.remat_policy, attention_impl=cfg.attention_impl)
    self.visual = vision.VisionTower(cfg.vision, **run, **kw)
    self.embed_tokens = nn.Embed(
        cfg.text.vocab_size, cfg.text.hidden_size,
        embedding_init=layers.logical(layers.default_kernel_init, ("vocab", "embed")),
        dtype=layers.dtype_of(cfg.dtype), param_dtype=layers.dtype_of(cfg.param_dtype))
    self.language_model = Decoder(cfg.text, len(cfg.vision.deepstack_visual_indexes), **run, **kw)
    if not cfg.tie_word_embeddings:
      self.lm_head = layers.Dense(cfg.text.vocab_size, ("embed", "vocab"), False, **kw)
    if cfg.depth_head is not None:
      self.depth_head = make_depth_head(cfg.depth_head, token_size=cfg.vision.token_size, **kw)

  def __call__(self, input_ids: jax.Array, pixel_values: Optional[jax.Array] = None,
               attention_mask: Optional[jax.Array] = None, *, positions: Optional[jax.Array] = None,
               cache: Optional[KVCache] = None, with_depth: bool = True,
               detach_head_inputs: bool = False) -> VLMOutput:
    """Prefill (pixel_values given) or a decode step (cache given, text only).

    input_ids [B, L] int32 with image placeholders expanded; pixel_values [B, H, W, 3];
    attention_mask [B, L] (1 = real token); positions [3, B, L] to override the M-RoPE ids.
    detach_head_inputs stops the gradient at the depth head's inputs (training the head alone
    then never runs a backward pass through the backbone).
    """
    cfg = self.cfg
    b, l = input_ids.shape
    x = self.embed_tokens(input_ids)
    grid = deepstack_seq = depth = None
    if pixel_values is not None:
      grid = vision.llm_grid(cfg.vision, pixel_values.shape)
      n_img = grid[0] * grid[1]
      check_placeholders(input_ids, cfg.image_token_id, n_img)
      image, deepstack = self.visual(pixel_values)
      x = scatter_image_tokens(input_ids, cfg.image_token_id, x, image)
      if deepstack:
        zeros = jnp.zeros_like(x)
        deepstack_seq = jnp.stack([scatter_image_tokens(input_ids, cfg.image_token_id, zeros, f) for f in deepstack])
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))

    if positions is None:
      positions = rope.mrope_positions(input_ids, attention_mask, cfg.image_token_id, grid)
    cos, sin = rope.text_mrope(positions, cfg.text.head_dim, cfg.text.rope_theta, cfg.text.mrope_section)
    mask, cache = self._attention_mask(b, l, attention_mask, cache)
    hidden, new_kv = self.language_model(x, cos, sin, mask, deepstack_seq, cache)
    if cache is not None:
      cache = cache._replace(k=new_kv[0], v=new_kv[1], index=cache.index + l)

    if cfg.tie_word_embeddings:
      logits = self.embed_tokens.attend(hidden)
    else:
      logits = self.lm_head(hidden)
    logits = nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))

    if with_depth and pixel_values is not None and cfg.depth_head is not None:
      pos = image_token_positions(input_ids, cfg.image_token_id, grid[0] * grid[1])
      feats = list(deepstack) + [jnp.take_along_axis(hidden, pos[..., None], axis=1)]
      if detach_head_inputs:
        feats = [jax.lax.stop_gradient(f) for f in feats]
      depth = self.depth_head(feats, grid, pixel_values.shape[1:3])  # the image size, whatever the token size
    return VLMOutput(logits=logits, depth=depth, positions=positions, cache=cache, hidden=hidden)

  def _attention_mask(self, b, l, attention_mask, cache):
    """Causal + padding over the keys: the L new ones, or the whole cache (queries from its index)."""
    valid_new = jnp.ones((b, l), bool) if attention_mask is None else attention_mask.astype(bool)
    if cache is None:
      return layers.AttentionMask(valid_new), None
    valid = jax.lax.dynamic_update_slice(cache.valid, valid_new, (0, cache.index))
    return layers.AttentionMask(valid, cache.index), cache._replace(valid=valid)

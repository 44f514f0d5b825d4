"""KV-cache decoding: consistent with the full forward, and equal to transformers' `generate`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_utils import hf_inputs, hf_model, make_batch, params_from_hf, tiny, torch
import depthvlm_jax as dvlm


@pytest.fixture(scope="module")
def pair():
  cfg = tiny(depth_head=None)
  model = hf_model(cfg, seed=2)
  return cfg, model, params_from_hf(model, cfg)


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_greedy_16_tokens_equal_transformers_generate(pair, pad_side):
  cfg, hf, params = pair
  ids, mask, pixels = make_batch(cfg, seed=4, pad_side=pad_side)
  inputs = hf_inputs(cfg, ids, mask, pixels)
  out = dvlm.generate(dvlm.DepthVLM(cfg), params, jnp.asarray(ids, jnp.int32), jnp.asarray(pixels),
                      jnp.asarray(mask, jnp.int32), max_new_tokens=16)
  if pad_side == "right":
    # transformers appends after the last slot, so right padding only makes sense per row.
    for b in range(ids.shape[0]):
      n = int(mask[b].sum())
      row = {k: (v[:, :n] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v) for k, v in
             hf_inputs(cfg, ids[b:b + 1], mask[b:b + 1], pixels[b:b + 1]).items()}
      with torch.no_grad():
        ref = hf.generate(**row, max_new_tokens=16, do_sample=False, pad_token_id=0)[:, n:].numpy()
      np.testing.assert_array_equal(np.asarray(out.tokens[b:b + 1]), ref)
    return
  with torch.no_grad():
    ref = hf.generate(**inputs, max_new_tokens=16, do_sample=False, pad_token_id=0)[:, ids.shape[1]:].numpy()
  assert ref.shape == (2, 16)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  assert len(set(ref[0].tolist())) > 1, "degenerate reference: a constant token sequence proves little"


def test_cached_decoding_matches_full_forward(pair):
  cfg, _, params = pair
  ids, mask, pixels = make_batch(cfg, seed=5)
  model = dvlm.DepthVLM(cfg)
  ids, mask, pix = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), jnp.asarray(pixels)
  gen = dvlm.generate(model, params, ids, pix, mask, max_new_tokens=6)
  full_ids = jnp.concatenate([ids, gen.tokens], axis=1)
  full_mask = jnp.concatenate([mask, jnp.ones_like(gen.tokens)], axis=1)
  full = model.apply({"params": params}, full_ids, pix, full_mask)
  greedy = jnp.argmax(full.logits[:, ids.shape[1] - 1:-1], axis=-1)
  np.testing.assert_array_equal(np.asarray(greedy), np.asarray(gen.tokens))
  np.testing.assert_allclose(np.asarray(gen.first_logits), np.asarray(full.logits[:, ids.shape[1] - 1]), atol=1e-5)


def test_sampling_is_seeded_and_respects_top_k(pair):
  cfg, _, params = pair
  ids, mask, pixels = make_batch(cfg, seed=6)
  args = (dvlm.DepthVLM(cfg), params, jnp.asarray(ids, jnp.int32), jnp.asarray(pixels), jnp.asarray(mask, jnp.int32))
  a = dvlm.generate(*args, jax.random.key(1), max_new_tokens=8, temperature=1.0, top_k=1)
  greedy = dvlm.generate(*args, max_new_tokens=8)
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(greedy.tokens))  # top_k=1 is greedy
  b1 = dvlm.generate(*args, jax.random.key(7), max_new_tokens=8, temperature=5.0)
  b2 = dvlm.generate(*args, jax.random.key(7), max_new_tokens=8, temperature=5.0)
  b3 = dvlm.generate(*args, jax.random.key(8), max_new_tokens=8, temperature=5.0)
  np.testing.assert_array_equal(np.asarray(b1.tokens), np.asarray(b2.tokens))
  assert not np.array_equal(np.asarray(b1.tokens), np.asarray(b3.tokens))


def test_eos_stops_a_row(pair):
  cfg, _, params = pair
  ids, mask, pixels = make_batch(cfg, seed=4)
  args = (dvlm.DepthVLM(cfg), params, jnp.asarray(ids, jnp.int32), jnp.asarray(pixels), jnp.asarray(mask, jnp.int32))
  free = np.asarray(dvlm.generate(*args, max_new_tokens=8).tokens)
  eos = int(free[0, 2])
  stopped = np.asarray(dvlm.generate(*args, max_new_tokens=8, eos_token_id=eos, pad_token_id=7).tokens)
  first = int(np.argmax(free[0] == eos))
  np.testing.assert_array_equal(stopped[0, :first + 1], free[0, :first + 1])
  assert (stopped[0, first + 1:] == 7).all()

"""The Flax model equals `transformers`' Qwen3-VL on equal random weights (float32)."""

import jax.numpy as jnp
import numpy as np
import pytest

from hf_utils import hf_inputs, hf_model, make_batch, params_from_hf, tiny, torch, transformers
from depthvlm_jax.model.vision import patchify
from depthvlm_jax.model.vlm import DepthVLM

TOL = 1e-4


@pytest.fixture(scope="module")
def pair():
  cfg = tiny(depth_head=None)
  model = hf_model(cfg)
  return cfg, model, params_from_hf(model, cfg)


def test_patchify_matches_hf_image_processor():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
  proc = transformers.Qwen2VLImageProcessor(
      do_resize=False, patch_size=16, merge_size=2, temporal_patch_size=2,
      image_mean=[0.5] * 3, image_std=[0.5] * 3)
  ref = proc(images=list(images), return_tensors="np")
  ours = patchify((images.astype(np.float32) / 255 - 0.5) / 0.5, 16, 2, 2)
  np.testing.assert_array_equal(ref["image_grid_thw"], [[1, 4, 6]] * 2)
  np.testing.assert_allclose(np.asarray(ours).reshape(-1, 1536), ref["pixel_values"], atol=1e-6)


def test_vision_tower_and_deepstack_match(pair):
  cfg, hf, params = pair
  ids, mask, pixels = make_batch(cfg)
  inputs = hf_inputs(cfg, ids, mask, pixels)
  with torch.no_grad():
    ref = hf.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
  merged, deepstack = DepthVLM(cfg).apply({"params": params}, jnp.asarray(pixels),
                                          method=lambda m, x: m.visual(x))
  assert len(deepstack) == len(ref.deepstack_features) == 3
  np.testing.assert_allclose(np.asarray(merged).reshape(-1, merged.shape[-1]), ref.pooler_output.numpy(), atol=TOL)
  for ours, theirs in zip(deepstack, ref.deepstack_features):
    np.testing.assert_allclose(np.asarray(ours).reshape(-1, ours.shape[-1]), theirs.numpy(), atol=TOL)


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_full_model_logits_match(pair, pad_side):
  cfg, hf, params = pair
  ids, mask, pixels = make_batch(cfg, pad_side=pad_side)
  with torch.no_grad():
    ref = hf(**hf_inputs(cfg, ids, mask, pixels)).logits.numpy()
  out = DepthVLM(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(pixels),
                            jnp.asarray(mask, jnp.int32))
  valid = mask.astype(bool)
  diff = np.abs(np.asarray(out.logits)[valid] - ref[valid]).max()
  assert diff <= TOL, diff
  assert out.depth is None


def test_positions_match_hf_rope_index(pair):
  cfg, hf, _ = pair
  ids, mask, pixels = make_batch(cfg)
  inputs = hf_inputs(cfg, ids, mask, pixels)
  ref, _ = hf.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                   inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])
  from depthvlm_jax.model.rope import mrope_positions
  ours = mrope_positions(jnp.asarray(ids), jnp.asarray(mask), cfg.image_token_id, (2, 3))
  np.testing.assert_array_equal(np.asarray(ours)[:, mask.astype(bool)], ref.numpy()[:, mask.astype(bool)])


def test_tied_embeddings_logits_match():
  cfg = tiny(depth_head=None, tie_word_embeddings=True)
  hf = hf_model(cfg, seed=1)
  params = params_from_hf(hf, cfg)
  assert "lm_head" not in params
  ids, mask, pixels = make_batch(cfg, seed=1)
  with torch.no_grad():
    ref = hf(**hf_inputs(cfg, ids, mask, pixels)).logits.numpy()
  out = DepthVLM(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(pixels),
                            jnp.asarray(mask, jnp.int32))
  valid = mask.astype(bool)
  assert np.abs(np.asarray(out.logits)[valid] - ref[valid]).max() <= TOL


def test_text_only_batch_matches(pair):
  cfg, hf, params = pair
  rng = np.random.default_rng(3)
  ids = rng.integers(0, 400, (2, 9))
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
  out = DepthVLM(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32))
  assert np.abs(np.asarray(out.logits) - ref).max() <= TOL

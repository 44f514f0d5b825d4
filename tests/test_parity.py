"""The Flax model equals `transformers`' Qwen3-VL on equal random weights (float32).

The weights are O(1) (`hf_utils.o1_weights`), not init scale: at std 0.02 GELU is nearly
linear, attention nearly uniform and the outputs tiny, so a tanh/erf GELU swap or a row/column
swap of the vision rotary stayed under an absolute 1e-4. Errors are
relative to the reference's largest magnitude. Correct code measures ~1e-6 for whole-model
outputs and ~1e-7 for single modules; each of those defects gives ~1e-4 (GELU variants) or
~1e-1 (rotary, norm placement).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_utils import hf_inputs, hf_model, make_batch, params_from_hf, tiny, torch, transformers
from depthvlm_jax.model.vision import PatchMerger, VisionMLP, patchify
from depthvlm_jax.model.vlm import DepthVLM

REL = 1e-5  # whole vision tower / whole model (float32 noise through 8 layers ~1e-6)
REL_MODULE = 2e-6  # one MLP or merger (noise ~1e-7; a tanh<->erf GELU swap gives ~1e-4)


def rel_err(ours, ref) -> float:
  """max |ours - ref| / max |ref|."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def pair():
  cfg = tiny(depth_head=None)
  model = hf_model(cfg, o1=True)
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


def test_vision_mlp_and_mergers_match_hf_modules(pair):
  """Each module alone on O(1) inputs: a GELU variant or norm placement error is ~1000x the noise."""
  cfg, hf, params = pair
  vis = params["visual"]
  x = np.random.default_rng(7).normal(0, 1.5, (48, cfg.vision.hidden_size)).astype(np.float32)
  mlp = jax.tree.map(lambda a: a[0], vis["blocks_1"]["mlp"])  # scanned segment of one block
  cases = [("block mlp", VisionMLP(cfg.vision), mlp, hf.model.visual.blocks[1].mlp, x),
           ("merger", PatchMerger(cfg.vision, False), vis["merger"], hf.model.visual.merger, x[None]),
           ("deepstack merger", PatchMerger(cfg.vision, True), vis["deepstack_merger_1"],
            hf.model.visual.deepstack_merger_list[1], x[None])]
  for name, module, p, ref_module, inp in cases:
    with torch.no_grad():
      ref = ref_module(torch.tensor(x)).numpy()
    ours = np.asarray(module.apply({"params": p}, jnp.asarray(inp))).reshape(ref.shape)
    err = rel_err(ours, ref)
    print(f"{name}: relative error {err:.2e}")
    assert err <= REL_MODULE, (name, err)


def test_vision_tower_and_deepstack_match(pair):
  cfg, hf, params = pair
  ids, mask, pixels = make_batch(cfg)
  inputs = hf_inputs(cfg, ids, mask, pixels)
  with torch.no_grad():
    ref = hf.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
  merged, deepstack = DepthVLM(cfg).apply({"params": params}, jnp.asarray(pixels),
                                          method=lambda m, x: m.visual(x))
  assert len(deepstack) == len(ref.deepstack_features) == 3
  assert ref.pooler_output.std() > 0.3  # O(1) features, not a near-constant bias
  errs = [rel_err(np.asarray(merged).reshape(-1, merged.shape[-1]), ref.pooler_output.numpy())]
  for ours, theirs in zip(deepstack, ref.deepstack_features):
    errs.append(rel_err(np.asarray(ours).reshape(-1, ours.shape[-1]), theirs.numpy()))
  print("merger, deepstack relative errors:", " ".join(f"{e:.2e}" for e in errs))
  assert max(errs) <= REL, errs


def logits_rel_err(cfg, hf, params, ids, mask, pixels) -> float:
  """Relative error of our logits at the real (non-padding) tokens."""
  with torch.no_grad():
    ref = hf(**hf_inputs(cfg, ids, mask, pixels)).logits.numpy()
  out = DepthVLM(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(pixels),
                            jnp.asarray(mask, jnp.int32))
  assert out.depth is None
  valid = mask.astype(bool)
  assert ref[valid].std() > 0.5  # logits spread O(1): a degenerate model proves little
  return rel_err(np.asarray(out.logits)[valid], ref[valid])


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_full_model_logits_match(pair, pad_side):
  cfg, hf, params = pair
  ids, mask, pixels = make_batch(cfg, pad_side=pad_side)
  err = logits_rel_err(cfg, hf, params, ids, mask, pixels)
  print(f"{pad_side} padding: logits relative error {err:.2e}")
  assert err <= REL, err


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
  hf = hf_model(cfg, seed=1, o1=True)
  params = params_from_hf(hf, cfg)
  assert "lm_head" not in params
  ids, mask, pixels = make_batch(cfg, seed=1)
  err = logits_rel_err(cfg, hf, params, ids, mask, pixels)
  print(f"tied embeddings: logits relative error {err:.2e}")
  assert err <= REL, err


def test_text_only_batch_matches(pair):
  cfg, hf, params = pair
  rng = np.random.default_rng(3)
  ids = rng.integers(0, 400, (2, 9))
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
  out = DepthVLM(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32))
  err = rel_err(out.logits, ref)
  print(f"text only: logits relative error {err:.2e}")
  assert ref.std() > 0.5 and err <= REL, err

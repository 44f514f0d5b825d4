"""Tiny random `transformers` Qwen3-VL models and inputs shared by the parity tests."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from depthvlm_jax.convert import hf_config, keymap  # noqa: E402
from depthvlm_jax.model.config import get_config  # noqa: E402
from depthvlm_jax.model.vision import patchify  # noqa: E402


def hf_model(cfg, seed: int = 0, o1: bool = False):
  """A random HF Qwen3VLForConditionalGeneration for `cfg` (eager attention, float32, eval).

  Norm weights are perturbed away from 1 so that a misplaced scale cannot hide. With `o1`,
  every parameter is redrawn at O(1) scale (`o1_weights`), so that nonlinearities, attention
  patterns and normalisation placement all move the outputs by O(1).
  """
  torch.manual_seed(seed)
  hf_cfg = transformers.Qwen3VLConfig(**hf_config.to_hf(cfg))
  hf_cfg._attn_implementation = "eager"
  hf_cfg.text_config._attn_implementation = "eager"
  hf_cfg.vision_config._attn_implementation = "eager"
  model = transformers.Qwen3VLForConditionalGeneration(hf_cfg).eval()
  with torch.no_grad():
    if o1:
      o1_weights(model)
    else:
      for name, p in model.named_parameters():
        if "norm" in name:
          p.add_(0.1 * torch.randn_like(p))
        elif name.endswith("bias"):
          p.normal_(0, 0.02)
  return model


def o1_weights(model, gain: float = 1.5):
  """Redraws every parameter so that activations are O(1), not init-scale (std 0.02).

  At init scale GELU is nearly linear, attention nearly uniform and the outputs tiny, so a
  wrong activation, rotary layout or norm placement moves them by less than 1e-4. Here: matrices ~ N(0, gain^2 / fan_in) (pre-activations of std ~gain),
  embedding tables ~ N(0, 1), norm scales 1 + N(0, 0.3^2), biases ~ N(0, 0.5^2).
  """
  for name, p in model.named_parameters():
    if "norm" in name and name.endswith("weight"):
      p.copy_(1 + 0.3 * torch.randn_like(p))
    elif name.endswith("bias"):
      p.normal_(0, 0.5)
    elif "embed_tokens" in name or "pos_embed" in name:
      p.normal_(0, 1.0)
    else:
      p.normal_(0, gain / float(np.prod(p.shape[1:])) ** 0.5)


def state_dict_numpy(model) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def params_from_hf(model, cfg):
  import jax.numpy as jnp
  import jax
  sd = state_dict_numpy(model)
  if cfg.tie_word_embeddings:
    sd.pop("lm_head.weight", None)
  return jax.tree.map(jnp.asarray, keymap.hf_to_params(sd, cfg))


def tiny(**overrides):
  return get_config("tiny", **overrides)


def make_batch(cfg, image_hw=(64, 96), batch=2, seed=0, pad_side="left"):
  """Two rows with different text around one image each, the shorter row padded."""
  rng = np.random.default_rng(seed)
  n_img = (image_hw[0] // 32) * (image_hw[1] // 32)
  vocab = cfg.text.vocab_size
  special = {cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id}
  normal = np.array([t for t in range(vocab) if t not in special])
  rows = []
  for b in range(batch):
    pre = rng.choice(normal, 3 + 2 * b)
    post = rng.choice(normal, 7 - b)
    rows.append(np.concatenate([pre, [cfg.vision_start_token_id], [cfg.image_token_id] * n_img,
                                [cfg.vision_end_token_id], post]))
  length = max(len(r) for r in rows)
  ids = np.zeros((batch, length), np.int64)
  mask = np.zeros((batch, length), np.int64)
  for b, r in enumerate(rows):
    if pad_side == "left":
      ids[b, length - len(r):], mask[b, length - len(r):] = r, 1
    else:
      ids[b, :len(r)], mask[b, :len(r)] = r, 1
  pixels = rng.uniform(-1, 1, (batch, *image_hw, 3)).astype(np.float32)
  return ids, mask, pixels


def hf_inputs(cfg, ids, mask, pixels):
  """The same batch in the HF model's input format (flattened patches, grid_thw, token types)."""
  b, h, w, _ = pixels.shape
  v = cfg.vision
  flat = np.asarray(patchify(pixels, v.patch_size, v.temporal_patch_size, v.spatial_merge_size))
  return dict(
      input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
      pixel_values=torch.tensor(flat.reshape(b * flat.shape[1], -1)),
      image_grid_thw=torch.tensor([[1, h // v.patch_size, w // v.patch_size]] * b),
      mm_token_type_ids=torch.tensor((ids == cfg.image_token_id).astype(np.int64)))

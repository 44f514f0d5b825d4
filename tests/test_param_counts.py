"""The 2B/4B/8B presets have exactly the parameter counts of the transformers models."""

import dataclasses
import json
import math
from pathlib import Path

import jax
import pytest

from hf_utils import torch, transformers
from depthvlm_jax.convert import hf_config
from depthvlm_jax.convert.pretrained import abstract_params
from depthvlm_jax.model.config import get_config

# Published totals, for the reader: Qwen3-VL-2B ~2.13e9, 4B ~4.44e9, 8B ~8.77e9.


def count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("preset", ["2b", "4b", "8b"])
def test_preset_param_count_equals_transformers(preset):
  cfg = get_config(preset, depth_head=None)
  with torch.device("meta"):
    hf = transformers.Qwen3VLForConditionalGeneration(transformers.Qwen3VLConfig(**hf_config.to_hf(cfg)))
  hf_count = sum(p.numel() for p in hf.parameters())  # tied lm_head is counted once
  ours = count(abstract_params(cfg))
  assert ours == hf_count, (preset, ours, hf_count)


# The published config.json files (transformers 4.57 layout), outside the repository.
HF_CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "hf_configs"
PUBLISHED = {"4b": "qwen3_vl_4b_instruct.config.json", "8b": "qwen3_vl_8b_instruct.config.json"}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_preset_equals_the_published_config(preset):
  """The presets against Qwen's own config.json, not against configs built from the presets:
  every vision/text field, tying and token ids, and transformers' parameter count of a model
  built from the published file."""
  path = HF_CONFIGS / PUBLISHED[preset]
  if not path.exists():
    pytest.skip(f"{path} not found (the shared fixtures are not part of the repository)")
  published = json.loads(path.read_text())
  ours, theirs = get_config(preset, depth_head=None), hf_config.from_hf(published)
  for section in ("vision", "text"):
    a, b = dataclasses.asdict(getattr(ours, section)), dataclasses.asdict(getattr(theirs, section))
    assert a == b, (preset, section, {k: (a[k], b[k]) for k in a if a[k] != b[k]})
  for field in ("tie_word_embeddings", "image_token_id", "video_token_id", "vision_start_token_id",
                "vision_end_token_id"):
    assert getattr(ours, field) == getattr(theirs, field), (preset, field)
  assert ours == theirs
  with torch.device("meta"):
    hf = transformers.Qwen3VLForConditionalGeneration(transformers.Qwen3VLConfig(**published))
  assert count(abstract_params(ours)) == sum(p.numel() for p in hf.parameters())


def test_4b_depth_head_adds_the_release_head():
  with_head = count(abstract_params(get_config("4b")))
  without = count(abstract_params(get_config("4b", depth_head=None)))
  assert with_head - without == 35_145_921

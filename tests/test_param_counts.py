"""The 2B/4B/8B presets have exactly the parameter counts of the transformers models."""

import math

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


def test_4b_depth_head_adds_the_release_head():
  with_head = count(abstract_params(get_config("4b")))
  without = count(abstract_params(get_config("4b", depth_head=None)))
  assert with_head - without == 35_145_921

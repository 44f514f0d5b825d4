"""`load_pretrained`: one entry for a Hugging Face directory or a training workdir.

A workdir (it holds the run's experiment.json) loads its latest committed checkpoint with the
run's own model config; anything else is read as a Hugging Face Qwen3-VL / DepthVLM directory.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import flax.linen as nn
import jax
from ml_collections import ConfigDict

from depthvlm_jax import experiment
from depthvlm_jax.convert import pretrained
from depthvlm_jax.model.vlm import DepthVLM
from depthvlm_jax.train import checkpoint


def experiment_config(path: str) -> Optional[ConfigDict]:
  """The resolved experiment config of a workdir, or None for any other directory."""
  file = os.path.join(path, experiment.CONFIG_FILE)
  if not os.path.isfile(file):
    return None
  with open(file, encoding="utf-8") as f:
    return experiment.from_json(f.read())


def load_pretrained(path: str, *, shardings=None, step: Optional[int] = None, **overrides: Any) -> tuple[DepthVLM, dict]:
  """(model, params) from a workdir (latest committed checkpoint, or `step`) or an HF directory.

  `overrides` replace ModelConfig fields (dtype, remat_policy, ...); `shardings` (a tree like the
  params) places each tensor on its devices as it is read.
  """
  config = experiment_config(path)
  if config is None:
    return pretrained.load_pretrained(path, shardings=shardings, **overrides)
  cfg = experiment.model_config(config).replace(**overrides)
  abstract = nn.unbox(pretrained.abstract_params(cfg))
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract)
  params, _ = checkpoint.restore_params(path, checkpoint.abstract_like(abstract, shardings), step)
  return DepthVLM(cfg), params

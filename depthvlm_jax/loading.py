"""`load_pretrained`: one entry for a Hugging Face directory, a training workdir, or one
checkpoint of a workdir.

A workdir (it holds the run's experiment.json) loads its latest committed checkpoint with the
run's own model config, WORKDIR/checkpoints/STEP that step's; anything else is read as a Hugging
Face Qwen3-VL / DepthVLM directory.
"""

from __future__ import annotations

import json
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


def training_median(path: str) -> Optional[float]:
  """The training-median depth a workdir's run measured (its results.json), if any: the best
  constant, which evaluations show as a baseline."""
  file = os.path.join(resolve(path)[0], experiment.RESULTS_FILE)
  if not os.path.isfile(file):
    return None
  with open(file, encoding="utf-8") as f:
    return json.load(f).get("training_median")


def resolve(path: str, step: Optional[int] = None) -> tuple[str, Optional[int]]:
  """WORKDIR/checkpoints/STEP -> (WORKDIR, STEP); any other path is returned as it is."""
  parent = os.path.dirname(os.path.normpath(path))
  name = os.path.basename(os.path.normpath(path))
  if os.path.basename(parent) == checkpoint.DIR and name.isdigit() and experiment_config(os.path.dirname(parent)):
    if step is not None and step != int(name):
      raise ValueError(f"{path} is checkpoint step {name}, but step={step} was asked for")
    return os.path.dirname(parent), int(name)
  return path, step


def load_pretrained(path: str, *, shardings=None, step: Optional[int] = None, **overrides: Any) -> tuple[DepthVLM, dict]:
  """(model, params) from a workdir (latest committed checkpoint, or `step`), a checkpoint
  directory in one, or an HF directory.

  `overrides` replace ModelConfig fields (dtype, remat_policy, ...); `shardings` (a tree like the
  params) places each tensor on its devices as it is read.
  """
  path, step = resolve(path, step)
  config = experiment_config(path)
  if config is None:
    if step is not None:
      raise ValueError(f"{path} is not a training workdir (no {experiment.CONFIG_FILE}): step={step} selects a "
                       "checkpoint of one")
    return pretrained.load_pretrained(path, shardings=shardings, **overrides)
  cfg = experiment.model_config(config).replace(**overrides)
  abstract = nn.unbox(pretrained.abstract_params(cfg))
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract)
  params, _ = checkpoint.restore_params(path, checkpoint.abstract_like(abstract, shardings), step)
  return DepthVLM(cfg), params

"""The optimizer of a training stage: AdamW, warmup + cosine, clipping, per-group learning rates.

Which parameters train is a list of regular expressions over '/'-joined parameter paths
(e.g. "depth_head/.*"), not code. The optimizer only ever sees the trainable parameters, as a
flat {path: array} dict, so frozen ones have no optimizer state at all and no gradient is
computed for them.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from depthvlm_jax.convert.keymap import flatten, unflatten


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  lr: float
  steps: int  # optimizer updates in the stage (the schedule's length)
  warmup_frac: float = 0.0
  end_lr_frac: float = 0.0  # cosine decays to lr * end_lr_frac
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  grad_clip: float = 1.0  # global-norm clipping; 0 = none
  trainable: tuple[str, ...] = (".*",)
  # (pattern, multiplier) pairs: the first matching pattern scales that parameter's lr.
  lr_multipliers: tuple[tuple[str, float], ...] = ()


def matches(path: str, patterns: Sequence[str]) -> bool:
  return any(re.fullmatch(p, path) for p in patterns)


def split(params: Mapping, patterns: Sequence[str]) -> tuple[dict, dict]:
  """Nested params -> (trainable, frozen) flat {path: array} dicts."""
  flat = flatten(params)
  trainable = {k: v for k, v in flat.items() if matches(k, patterns)}
  return trainable, {k: v for k, v in flat.items() if k not in trainable}


def merge(trainable: Mapping, frozen: Mapping) -> dict:
  return unflatten({**frozen, **trainable})


def check_patterns(params: Mapping, patterns: Sequence[str]) -> None:
  """Every pattern must select something: a typo would otherwise freeze the whole model."""
  paths = list(flatten(params))
  unused = [p for p in patterns if not any(re.fullmatch(p, k) for k in paths)]
  if unused:
    raise ValueError(f"trainable patterns {unused} match no parameter (paths look like {paths[:3]})")


def schedule(cfg: OptimizerConfig) -> optax.Schedule:
  """Linear warmup from 0, then cosine decay to lr * end_lr_frac at `steps`."""
  warmup = int(round(cfg.warmup_frac * cfg.steps))
  return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(cfg.steps, warmup + 1), cfg.lr * cfg.end_lr_frac)


def _group(path: str, cfg: OptimizerConfig) -> str:
  for i, (pattern, _) in enumerate(cfg.lr_multipliers):
    if re.fullmatch(pattern, path):
      return f"group{i}"
  return "default"


def make(cfg: OptimizerConfig, trainable: Mapping[str, jax.Array]) -> optax.GradientTransformation:
  """AdamW over the flat trainable dict; no weight decay on vectors (norms, biases)."""

  def adamw(scale: float):
    lr = schedule(dataclasses.replace(cfg, lr=cfg.lr * scale))
    return optax.adamw(lr, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay,
                       mask=lambda tree: jax.tree.map(lambda x: jnp.ndim(x) > 1, tree))

  groups = {"default": adamw(1.0)}
  groups.update({f"group{i}": adamw(m) for i, (_, m) in enumerate(cfg.lr_multipliers)})
  labels = {k: _group(k, cfg) for k in trainable}
  inner = groups["default"] if set(labels.values()) == {"default"} else optax.multi_transform(groups, labels)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), inner) if cfg.grad_clip else inner

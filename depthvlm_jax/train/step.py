"""The jitted train step: forward, the task's loss terms, gradients of the trainable parameters
only, AdamW, and a skip of any update whose loss or gradient is not finite.

The state is sharded over the ("data", "fsdp", "tensor") mesh by the logical-axis rules, the
batch over ("data", "fsdp"); the state is donated, so a step holds one copy of it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from depthvlm_jax import sharding
from depthvlm_jax.convert.keymap import flatten
from depthvlm_jax.convert.pretrained import abstract_params
from depthvlm_jax.model.vlm import DepthVLM
from depthvlm_jax.train import optimizer


class TrainState(NamedTuple):
  step: jax.Array  # batches consumed (skipped ones included)
  params: Any  # the full nested parameter tree
  opt_state: Any  # over the trainable parameters only (flat {path: array})
  skipped: jax.Array  # updates skipped for a non-finite loss or gradient, in total
  skipped_in_row: jax.Array  # ... and in a row (the trainer aborts past a limit)


@dataclasses.dataclass(frozen=True)
class StepConfig:
  optimizer: optimizer.OptimizerConfig
  loss_weights: Mapping[str, float]  # term name -> weight; weight 0 = not computed
  grad_accum: int = 1  # microbatches per update (the batch is split along its first axis)
  detach_head_inputs: bool = False  # stage 1: no backward pass through the frozen backbone


def init_state(params, cfg: StepConfig) -> TrainState:
  trainable, _ = optimizer.split(params, cfg.optimizer.trainable)
  opt_state = optimizer.make(cfg.optimizer, trainable).init(trainable)
  zero = lambda: jnp.zeros((), jnp.int32)  # three buffers: the state is donated leaf by leaf
  return TrainState(zero(), params, opt_state, zero(), zero())


def pixels_on_device(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, 3] -> the processor's (x / 255 - 0.5) / 0.5 (the host sends 4x fewer bytes)."""
  return images.astype(jnp.float32) * (2.0 / 255.0) - 1.0


def make_step(model: DepthVLM, task, cfg: StepConfig):
  """(state, batch) -> (state, metrics): one update (or a skip) of the trainable parameters."""
  names = tuple(n for n, w in cfg.loss_weights.items() if w)
  if not names:
    raise ValueError(f"every loss weight is 0 ({dict(cfg.loss_weights)}): nothing to train")
  unknown = sorted(set(names) - set(task.loss_names))
  if unknown:
    raise ValueError(f"loss terms {unknown} are not terms of task {task.name!r} (it has {list(task.loss_names)})")
  with_depth = "depth" in names

  def loss_fn(trainable, frozen, batch):
    out = model.apply({"params": optimizer.merge(trainable, frozen)}, batch["input_ids"],
                      pixels_on_device(batch["image"]), batch["attention_mask"], with_depth=with_depth,
                      detach_head_inputs=cfg.detach_head_inputs)
    terms = task.loss_terms(out, batch, names)
    total = sum(cfg.loss_weights[n] * terms[n] for n in names)
    return total, terms

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulate(trainable, frozen, batch):
    if cfg.grad_accum == 1:
      return grad_fn(trainable, frozen, batch)
    micro = jax.tree.map(lambda x: x.reshape(cfg.grad_accum, -1, *x.shape[1:]), batch)

    def body(carry, mb):
      (loss, terms), grads = grad_fn(trainable, frozen, mb)
      return jax.tree.map(jnp.add, carry, ((loss, terms), grads)), None

    zero = jax.eval_shape(grad_fn, trainable, frozen, jax.tree.map(lambda x: x[0], micro))
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
    total, _ = jax.lax.scan(body, zero, micro)
    return jax.tree.map(lambda x: x / cfg.grad_accum, total)

  def step(state: TrainState, batch) -> tuple[TrainState, dict]:
    trainable, frozen = optimizer.split(state.params, cfg.optimizer.trainable)
    tx = optimizer.make(cfg.optimizer, trainable)
    (loss, terms), grads = accumulate(trainable, frozen, batch)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = TrainState(
        step=state.step + 1,
        params=optimizer.merge(keep(new_trainable, trainable), frozen),
        opt_state=keep(opt_state, state.opt_state),
        skipped=state.skipped + (~finite).astype(jnp.int32),
        skipped_in_row=jnp.where(finite, 0, state.skipped_in_row + 1))
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite,
               "lr": optimizer.schedule(cfg.optimizer)(_count(state.opt_state)),
               **{f"loss/{n}": v for n, v in terms.items()}}
    return new_state, metrics

  return step


def _count(opt_state) -> jax.Array:
  """The optimizer's update count (what the schedule is at), from adam's state."""
  counts = [s.count for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]
  return counts[0]


def state_shardings(model: DepthVLM, mesh, rules: str, cfg: StepConfig) -> TrainState:
  """NamedShardings for the state of a stage: parameters by the logical rules, their Adam
  moments alike (they share the parameters' paths), counters replicated."""
  boxed = abstract_params(model.cfg)
  params = sharding.param_shardings(boxed, mesh, rules)
  state = jax.eval_shape(lambda p: init_state(p, cfg), nn.unbox(boxed))
  by_path = flatten(params)
  replicated = NamedSharding(mesh, P())

  def for_leaf(path, leaf):
    keys = [getattr(k, "key", None) for k in path]
    flat = next((k for k in keys if isinstance(k, str) and k in by_path), None)
    return replicated if flat is None else by_path[flat]

  opt = jax.tree_util.tree_map_with_path(for_leaf, state.opt_state)
  return TrainState(replicated, params, opt, replicated, replicated)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(("data", "fsdp")))


def jit_step(step_fn, shardings: TrainState, mesh):
  """The step jitted with explicit in/out shardings and the state donated."""
  batch = batch_sharding(mesh)
  replicated = NamedSharding(mesh, P())
  return jax.jit(step_fn, in_shardings=(shardings, batch), out_shardings=(shardings, replicated), donate_argnums=0)

"""Training checkpoints with orbax: parameters, optimizer state and progress, as one step of a
`CheckpointManager` under WORKDIR/checkpoints (atomic: orbax commits a step by renaming it into
place, so a half-written one is never listed). Parameters are their own item, so a reader that
only wants the weights (`load_pretrained(workdir)`) restores them alone, onto any sharding."""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

DIR = "checkpoints"


def manager(workdir: str, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep, create=not read_only,
                                         read_only=read_only)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), DIR), options=options,
                               item_names=("params", "opt_state", "progress"))


def save(mngr: ocp.CheckpointManager, step: int, params, opt_state, progress: dict) -> None:
  """Starts an asynchronous save (orbax copies to host first; the step goes on meanwhile)."""
  mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                          opt_state=ocp.args.StandardSave(opt_state),
                                          progress=ocp.args.JsonSave(progress)))


def latest_step(workdir: str) -> Optional[int]:
  if not os.path.isdir(os.path.join(workdir, DIR)):
    return None
  return manager(workdir, read_only=True).latest_step()


def restore_params(workdir: str, abstract: Any, step: Optional[int] = None) -> tuple[Any, int]:
  """The parameters of `step` (default: the latest committed one) shaped and sharded like
  `abstract` (ShapeDtypeStructs, with .sharding to place them)."""
  mngr = manager(workdir, read_only=True)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{workdir} has no committed checkpoint in {DIR}/")
  restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
  return restored.params, step


def abstract_like(tree, shardings=None):
  """ShapeDtypeStructs of a tree (with shardings) to restore into."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

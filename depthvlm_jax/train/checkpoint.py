"""Training checkpoints with orbax: one `CheckpointManager` step under WORKDIR/checkpoints holds
everything a run needs to go on exactly where it stopped:

  params     the parameter tree (its own item: `load_pretrained(workdir)` restores it alone,
             onto any mesh)
  opt_state  the optimizer state of the stage's trainable parameters
  position   JSON: global step, stage, step in the stage, skip counters, process count
  data       every process's grain iterator state (process_I-of-N.json; grain's orbax handler)

Saves are asynchronous: orbax copies the arrays to host memory, then writes and commits in a
background thread while training goes on. A step is committed by renaming its temporary
directory into place, so a save cut off by a kill is never listed; the next manager reports
such leftovers and removes them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import grain.checkpoint
import jax
import orbax.checkpoint as ocp
from absl import logging

DIR = "checkpoints"
_TMP = ".orbax-checkpoint-tmp"  # orbax's suffix for a step that is being written


@dataclasses.dataclass(frozen=True)
class Position:
  """Where a run stands; saved as the checkpoint's JSON item."""
  step: int  # global step (all stages)
  stage: str
  stage_step: int  # steps done in `stage`
  skipped: int = 0  # non-finite updates skipped in the stage
  skipped_in_row: int = 0
  skipped_records: int = 0  # bad records replaced by weight-0 examples in the stage
  processes: int = 1  # JAX processes that saved their data-iterator states


def manager(workdir: str, keep: int = 2, keep_every: int = 0, read_only: bool = False) -> ocp.CheckpointManager:
  """The run's manager: the last `keep` steps plus every `keep_every`-th (0: none) are kept."""
  root = os.path.join(os.path.abspath(workdir), DIR)
  if not read_only:
    _report_uncommitted(root)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else keep, keep_period=keep_every or None, create=not read_only,
      read_only=read_only, cleanup_tmp_directories=not read_only, enable_async_checkpointing=not read_only)
  return ocp.CheckpointManager(root, options=options, item_names=("params", "opt_state", "position", "data"))


def _report_uncommitted(root: str) -> None:
  if os.path.isdir(root):
    for name in sorted(os.listdir(root)):
      if _TMP in name:
        logging.warning("ignoring and removing %s: a save that never committed (the run was killed "
                        "while saving); the latest committed checkpoint is used instead", os.path.join(root, name))


class _IteratorState:
  """A data iterator's state captured at the step, for grain's orbax handler: the live iterator
  moves on while the save is written."""

  def __init__(self, iterator):
    self.state = json.dumps(iterator.get_state()).encode()

  def get_state(self) -> bytes:
    return self.state


def save(mngr: ocp.CheckpointManager, state, position: Position, data_iterator) -> None:
  """Starts an asynchronous save of a TrainState, its position and the data iterator's state."""
  mngr.save(position.step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
      position=ocp.args.JsonSave(dataclasses.asdict(position)),
      data=grain.checkpoint.CheckpointSave(_IteratorState(data_iterator))))


def latest(workdir: str) -> Optional[Position]:
  """The position of the latest committed checkpoint, or None when there is none."""
  if not os.path.isdir(os.path.join(workdir, DIR)):
    return None
  mngr = manager(workdir, read_only=True)
  step = mngr.latest_step()
  if step is None:
    return None
  if not os.path.isdir(os.path.join(workdir, DIR, str(step), "position")):
    raise ValueError(f"{workdir}: checkpoint step {step} has no position (written by an older version, it cannot "
                     "be resumed): pass --overwrite to train again, or start a new run from it with "
                     f"--config.model.init_from={workdir}")
  restored = mngr.restore(step, args=ocp.args.Composite(position=ocp.args.JsonRestore()))
  return Position(**restored.position)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iterator):
  """(params, opt_state) of `step`, shaped and sharded like `abstract_state` (a TrainState of
  ShapeDtypeStructs with shardings: any mesh), and `data_iterator` set to the saved state."""
  restored = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_state.params),
      opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
      data=grain.checkpoint.CheckpointRestore(data_iterator)))
  return restored.params, restored.opt_state


def restore_params(workdir: str, abstract: Any, step: Optional[int] = None) -> tuple[Any, int]:
  """The parameters of `step` (default: the latest committed one) shaped and sharded like
  `abstract` (ShapeDtypeStructs, with .sharding to place them)."""
  mngr = manager(workdir, read_only=True)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{workdir} has no committed checkpoint in {DIR}/")
  if step not in mngr.all_steps():
    raise FileNotFoundError(f"{workdir} has no committed checkpoint of step {step} in {DIR}/ "
                            f"(it has {sorted(mngr.all_steps())})")
  restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
  return restored.params, step


def abstract_like(tree, shardings=None):
  """ShapeDtypeStructs of a tree (with shardings) to restore into."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

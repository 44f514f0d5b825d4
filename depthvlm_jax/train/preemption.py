"""Preemption: SIGTERM ends a run at the next step boundary with a checkpoint, and the same
command resumes it.

One process catches SIGTERM itself. With several processes every one must stop at the same
step, so the decision is orbax's sync point instead (JAX's preemption service, which
`jax.distributed.initialize` starts, takes the signal and agrees on the step across hosts).
"""

from __future__ import annotations

import signal
import threading

import jax


class Preemption:
  """`with Preemption(mngr) as p:` ... `if p.reached(step):` save and stop."""

  def __init__(self, mngr):
    self.mngr = mngr
    self.signalled = False
    self._previous = None

  def __enter__(self) -> "Preemption":
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_signal(self, signum, frame) -> None:
    del signum, frame
    self.signalled = True

  def reached(self, step: int) -> bool:
    """Whether to save at `step` and stop (every process gets the same answer)."""
    if jax.process_count() > 1:
      return bool(self.mngr.reached_preemption(step))
    return self.signalled

"""Tasks: one object per method, owning its examples, text, loss terms, answer parsing and
evaluation, so that nothing else tests which method runs.

  depthvlm  dense metric depth from the DPT head + the fixed reply (DepthVLM)
  depthlm   the depth of one marked pixel, answered in text (DepthLM)
"""

from __future__ import annotations

from typing import Any

from depthvlm_jax.tasks.depthlm import DepthLMTask
from depthvlm_jax.tasks.depthvlm import DepthVLMTask

TASKS = {"depthvlm": DepthVLMTask, "depthlm": DepthLMTask}


def get(name: str, **kwargs: Any):
  """A task by name, with its options (e.g. DepthLM's crop ranges)."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
  return TASKS[name](**kwargs)

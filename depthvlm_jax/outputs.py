"""Writing outputs without harming users' files.

Three rules every writer of the project follows:
- A destination directory that holds anything not written by the same kind of command is
  refused unless the user passes `overwrite`; even then only files of the names the command
  writes are replaced, nothing else is removed.
- Files and directories are built under a hidden partial name beside their final place
  (`.NAME.partial-PID-XXXXXX`) and renamed into place when complete, so a reader never sees a
  half-written output.
- A killed run leaves only such partial names; the next writer into that place removes those
  whose process is gone.

A directory written by a command carries a small marker file naming the command's kind, which
is how a re-run recognises its own earlier output.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from importlib import metadata
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from absl import logging

MARKER = ".depthvlm_jax-output.json"
_PARTIAL = re.compile(r"\..+\.partial-(\d+)-[0-9a-f]{6}")


class OutputExistsError(FileExistsError):
  """The destination holds files this command did not write."""


def partial_path(final: os.PathLike | str) -> Path:
  """A hidden sibling name for building `final`; the next writer removes it if we are killed."""
  final = Path(final).absolute()
  return final.parent / f".{final.name}.partial-{os.getpid()}-{secrets.token_hex(3)}"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def clean_partials(directory: os.PathLike | str) -> list[Path]:
  """Removes the partial outputs of killed runs in `directory` (those of live processes stay)."""
  directory = Path(directory)
  removed = []
  if not directory.is_dir():
    return removed
  for entry in directory.iterdir():
    m = _PARTIAL.fullmatch(entry.name)
    if m and not _alive(int(m.group(1))):
      shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
      removed.append(entry)
  if removed:
    logging.warning("removed %d partial output(s) of killed runs in %s", len(removed), directory)
  return removed


def read_marker(directory: os.PathLike | str) -> Optional[dict]:
  try:
    with open(Path(directory) / MARKER) as f:
      marker = json.load(f)
  except (OSError, ValueError):
    return None
  return marker if isinstance(marker, dict) else None


def write_marker(directory: os.PathLike | str, kind: str) -> None:
  with atomic_file(Path(directory) / MARKER, "w") as f:
    json.dump({"kind": kind, "written_by": f"depthvlm_jax {metadata.version('depthvlm_jax')}"}, f)


def check_destination(path: os.PathLike | str, kind: str, overwrite: bool = False,
                      replaces: str = "files of the same names are replaced") -> bool:
  """May `kind` outputs be written at `path`? Returns whether it exists already (True: write
  into it, False: create it). Raises OutputExistsError naming the path and what to do."""
  path = Path(path)
  if path.exists() and not path.is_dir():
    raise OutputExistsError(f"{path} is a file, not a directory: give a new or an empty directory")
  if not path.exists():
    return False
  clean_partials(path)
  entries = [e for e in path.iterdir() if e.name != MARKER and not _PARTIAL.fullmatch(e.name)]
  marker = read_marker(path)
  if not entries or (marker and marker.get("kind") == kind) or overwrite:
    return True
  owner = f"holds a {marker.get('kind')} output" if marker else "holds files not written by this command"
  raise OutputExistsError(f"{path} is not empty and {owner}: choose a new directory, or pass --overwrite "
                          f"to write into it ({replaces}; other files are kept)")


@contextlib.contextmanager
def atomic_file(path: os.PathLike | str, mode: str = "wb") -> Iterator:
  """Opens a partial file that replaces `path` only when the block completes."""
  path = Path(path)
  tmp = partial_path(path)
  try:
    with open(tmp, mode) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_json(path: os.PathLike | str, obj) -> None:
  """Atomically writes strict JSON: NaN and inf become null, so the file always parses."""
  with atomic_file(path, "w") as f:
    json.dump(_finite(obj), f, indent=2, allow_nan=False)
    f.write("\n")


def _finite(obj):
  if isinstance(obj, np.generic):
    obj = obj.item()
  if isinstance(obj, float):
    return obj if obj == obj and abs(obj) != float("inf") else None
  if isinstance(obj, dict):
    return {k: _finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite(v) for v in obj]
  return obj

"""Reading and writing (sharded) safetensors directories as Hugging Face lays them out."""

from __future__ import annotations

import json
import os
import re
from typing import Iterable, Iterator

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


class CheckpointError(ValueError):
  """A checkpoint file that cannot be used; the message names the file and what is wrong."""


def is_weight_file(name: str) -> bool:
  """The names `write_tensors` writes: an export replaces exactly these."""
  return name in (SINGLE, INDEX) or bool(_SHARD.fullmatch(name))


def shard_files(path: str) -> list[str]:
  index = os.path.join(path, INDEX)
  if os.path.exists(index):
    try:
      with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise CheckpointError(f"{index}: not a safetensors index (a JSON object with a 'weight_map'): {e!r}") from e
    paths = [os.path.join(path, name) for name in files]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise CheckpointError(f"{index} lists shards that do not exist: {missing[:3]}")
    return paths
  single = os.path.join(path, SINGLE)
  if os.path.exists(single):
    return [single]
  raise FileNotFoundError(f"{path} has neither {SINGLE} nor {INDEX}: not a Hugging Face checkpoint directory")


def _open(file: str):
  try:
    return safe_open(file, "np")
  except Exception as e:  # safetensors raises its own error types for every kind of damage
    raise CheckpointError(f"{file}: not a readable safetensors file (truncated or corrupt?): {e}") from e


def tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
  """Key -> shape, from the headers only (no tensor is read)."""
  shapes = {}
  for file in shard_files(path):
    with _open(file) as f:
      for key in f.keys():
        shapes[key] = tuple(f.get_slice(key).get_shape())
  return shapes


def read_tensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
  """Every tensor of the checkpoint as numpy (bfloat16 via ml_dtypes), one at a time; a
  non-finite value is refused, naming the file and the tensor."""
  for file in shard_files(path):
    with _open(file) as f:
      for key in f.keys():
        try:
          x = f.get_tensor(key)
        except Exception as e:
          raise CheckpointError(f"{file}: tensor {key!r} cannot be read (truncated or corrupt?): {e}") from e
        check_finite(x, f"{file}: tensor {key!r}")
        yield key, x


def check_finite(x: np.ndarray, what: str) -> None:
  """Refuses NaN/inf weights: a checkpoint holding them is broken, converting it hides that."""
  if x.dtype.kind == "f" or x.dtype.name == "bfloat16":
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    if bad:
      raise CheckpointError(f"{what} has {bad} NaN/inf value(s) of {x.size}: the checkpoint is broken")


def write_tensors(path: str, tensors: Iterable[tuple[str, np.ndarray]], max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes shards of at most `max_shard_bytes` (+ an index when there is more than one)."""
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for key, value in tensors:
    value = np.ascontiguousarray(value)
    check_finite(value, f"tensor {key!r}")
    if shards[-1] and size + value.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][key] = value
    size += value.nbytes
  meta = {"format": "pt"}
  if len(shards) == 1:
    save_file(shards[0], os.path.join(path, SINGLE), metadata=meta)
    return
  weight_map, total = {}, 0
  for n, shard in enumerate(shards, 1):
    name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, os.path.join(path, name), metadata=meta)
    for key, value in shard.items():
      weight_map[key] = name
      total += value.nbytes
  with open(os.path.join(path, INDEX), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

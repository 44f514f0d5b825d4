"""Reading and writing (sharded) safetensors directories as Hugging Face lays them out."""

from __future__ import annotations

import json
import os
from typing import Iterable, Iterator

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def shard_files(path: str) -> list[str]:
  index = os.path.join(path, INDEX)
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
  single = os.path.join(path, SINGLE)
  if os.path.exists(single):
    return [single]
  raise FileNotFoundError(f"{path} has neither {SINGLE} nor {INDEX}: not a Hugging Face checkpoint directory")


def tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
  """Key -> shape, from the headers only (no tensor is read)."""
  shapes = {}
  for file in shard_files(path):
    with safe_open(file, "np") as f:
      for key in f.keys():
        shapes[key] = tuple(f.get_slice(key).get_shape())
  return shapes


def read_tensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
  """Every tensor of the checkpoint as numpy (bfloat16 via ml_dtypes), one at a time."""
  for file in shard_files(path):
    with safe_open(file, "np") as f:
      for key in f.keys():
        yield key, f.get_tensor(key)


def write_tensors(path: str, tensors: Iterable[tuple[str, np.ndarray]], max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes shards of at most `max_shard_bytes` (+ an index when there is more than one)."""
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for key, value in tensors:
    value = np.ascontiguousarray(value)
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

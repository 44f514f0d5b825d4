"""Ingest one source file into ArrayRecord shards, dispatching on the source's name.

To add a source: write `ingest/<name>.py` with a generator `records(path, root=None, **params)`
that yields validated DepthRecords and raises RecordError naming file, line and field for a
bad input; then add `"<name>": <name>.records` to CONVERTERS below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional

from depthvlm_jax.data.ingest import depthlm, depthvlm_bench, diode, eth3d, kitti, nyuv2
from depthvlm_jax.data.records import DepthRecord
from depthvlm_jax.data.shards import write_shards

CONVERTERS: dict[str, Callable[..., Iterator[DepthRecord]]] = {
    "depthvlm_bench": depthvlm_bench.records,
    "depthlm": depthlm.records,
    "nyuv2": nyuv2.records,
    "kitti": kitti.records,
    "diode": diode.records,
    "eth3d": eth3d.records,
}


def ingest(source: str, jsonl, out_dir, *, prefix: Optional[str] = None, num_shards: Optional[int] = None,
           records_per_shard: Optional[int] = None, overwrite: bool = False, **params) -> tuple[list[str], int]:
  """Converts `jsonl` (the source's input file) with CONVERTERS[source](jsonl, **params) and
  writes the records as `{prefix}-*-of-*.array_record` (prefix: the file's stem) under out_dir.
  Returns (shard paths, record count). A bad record stops the ingest with no shard written;
  `overwrite` as in `write_shards`."""
  if source not in CONVERTERS:
    raise ValueError(f"unknown source {source!r}; known: {sorted(CONVERTERS)}")
  count = 0

  def counted(records):
    nonlocal count
    for rec in records:
      count += 1
      yield rec

  paths = write_shards(counted(CONVERTERS[source](jsonl, **params)), out_dir, prefix or Path(jsonl).stem,
                       num_shards=num_shards, records_per_shard=records_per_shard, overwrite=overwrite)
  return paths, count

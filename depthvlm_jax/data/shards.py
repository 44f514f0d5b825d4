"""DepthRecords in ArrayRecord shards: atomic writing, grain random-access reading.

Shards are named `{prefix}-{i:05d}-of-{n:05d}.array_record` and written with group_size 1,
which grain needs for fast random access. An ingest writes into a hidden temporary folder
and renames the shards into place only once every record has validated and been written,
so a refused record leaves no shard, whole or partial, under a final name.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import grain
from absl import logging
from array_record.python.array_record_module import ArrayRecordWriter

from depthvlm_jax.data.records import DepthRecord

WRITER_OPTIONS = "group_size:1"
PathsOrGlob = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def shard_name(prefix: str, index: int, count: int) -> str:
  return f"{prefix}-{index:05d}-of-{count:05d}.array_record"


def write_shards(records: Iterable[DepthRecord], out_dir, prefix: str, *,
                 num_shards: Optional[int] = None, records_per_shard: Optional[int] = None,
                 log_every: int = 1000) -> list[str]:
  """Validates and writes records; returns the shard paths in order.

  num_shards: deal records round-robin into exactly this many shards (default 1), so a stream
    of unknown length needs one pass; reading the shards in order interleaves the records.
  records_per_shard: fill shards one after another instead (their count is known at the end).
  Shards of an earlier run with the same prefix are replaced, so a glob never mixes runs.
  """
  if num_shards is not None and records_per_shard is not None:
    raise ValueError("give num_shards or records_per_shard, not both")
  if records_per_shard is None:
    num_shards = num_shards or 1
    if num_shards < 1:
      raise ValueError(f"num_shards must be positive, got {num_shards}")
  elif records_per_shard < 1:
    raise ValueError(f"records_per_shard must be positive, got {records_per_shard}")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}-partial-", dir=out))
  writers: list[ArrayRecordWriter] = []

  def writer(index):
    while len(writers) <= index:
      writers.append(ArrayRecordWriter(str(tmp / f"{len(writers)}.array_record"), WRITER_OPTIONS))
    return writers[index]

  try:
    if num_shards:
      writer(num_shards - 1)
    start, count = time.monotonic(), 0
    for rec in records:
      rec.validate()
      data = rec.to_bytes()
      w = writer(count % num_shards if num_shards else count // records_per_shard)
      w.write(data)
      if not w.ok():
        raise OSError(f"ArrayRecord write failed in {tmp}")
      count += 1
      if count % log_every == 0:
        logging.info("%s: %d records written (%.1f/s)", prefix, count, count / (time.monotonic() - start))
    if count == 0:
      raise ValueError(f"no records to write for {prefix!r}")
    for w in writers:
      w.close()
    n = len(writers)
    paths = [out / shard_name(prefix, i, n) for i in range(n)]
    stale = re.compile(re.escape(prefix) + r"-\d{5}-of-\d{5}\.array_record")
    for old in out.iterdir():
      if stale.fullmatch(old.name) and old not in paths:
        old.unlink()
    for i, path in enumerate(paths):
      os.replace(tmp / f"{i}.array_record", path)
    logging.info("%s: %d records in %d shards under %s (%.1f s)", prefix, count, n, out,
                 time.monotonic() - start)
    return [str(p) for p in paths]
  finally:
    for w in writers:
      if w.is_open():
        w.close()
    shutil.rmtree(tmp, ignore_errors=True)


def shard_paths(paths_or_glob: PathsOrGlob) -> list[str]:
  """A glob pattern, a folder (all its shards), one path, or a list of paths -> sorted paths."""
  if isinstance(paths_or_glob, (str, os.PathLike)):
    p = os.fspath(paths_or_glob)
    if os.path.isdir(p):
      p = os.path.join(p, "*.array_record")
    paths = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
  else:
    paths = [os.fspath(p) for p in paths_or_glob]
  missing = [p for p in paths if not os.path.isfile(p)]
  if not paths or missing:
    raise FileNotFoundError(f"no ArrayRecord shards at {paths_or_glob!r}; missing: {missing}")
  return paths


def read_source(paths_or_glob: PathsOrGlob) -> grain.sources.ArrayRecordDataSource:
  """A grain random-access source of serialised records (decode with DepthRecord.from_bytes)."""
  return grain.sources.ArrayRecordDataSource(shard_paths(paths_or_glob))


def iter_records(paths_or_glob: PathsOrGlob) -> Iterator[DepthRecord]:
  """Every record of the shards, in order."""
  for data in read_source(paths_or_glob):
    yield DepthRecord.from_bytes(data)

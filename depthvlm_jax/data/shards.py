"""DepthRecords in ArrayRecord shards: atomic writing, grain random-access reading.

Shards are named `{prefix}-{i:05d}-of-{n:05d}.array_record` and written with group_size 1,
which grain needs for fast random access. An ingest writes into a hidden partial folder
and renames the shards into place only once every record has validated and been written,
so a refused record leaves no shard, whole or partial, under a final name. Reading goes
through `ShardSource`, which names the shard and record index of anything bad.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import grain
from absl import logging
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from depthvlm_jax import outputs
from depthvlm_jax.data.records import DepthRecord, RecordError, located

WRITER_OPTIONS = "group_size:1"
_SHARD = re.compile(r"(.+)-\d{5}-of-\d{5}\.array_record")
PathsOrGlob = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def shard_name(prefix: str, index: int, count: int) -> str:
  return f"{prefix}-{index:05d}-of-{count:05d}.array_record"


def _dataset_of(path: Path) -> Optional[str]:
  """The dataset named by a shard's first record (None if it cannot be read)."""
  try:
    return DepthRecord.from_bytes(grain.sources.ArrayRecordDataSource([str(path)])[0]).dataset
  except Exception:  # any damage means "not known to be ours"
    return None


def _check_collisions(out: Path, prefix: str, datasets: set[str], overwrite: bool) -> list[Path]:
  """Shards under `prefix` from an earlier run: replaceable when they hold the same dataset(s)."""
  earlier = sorted(p for p in out.iterdir() if (m := _SHARD.fullmatch(p.name)) and m.group(1) == prefix)
  others = sorted({str(_dataset_of(p)) for p in earlier} - datasets)
  if others and not overwrite:
    raise outputs.OutputExistsError(
        f"{out} already holds shards {prefix}-*.array_record of dataset(s) {others}, not {sorted(datasets)}: "
        "give another --prefix (or --out), or pass --overwrite to replace them")
  return earlier


def write_shards(records: Iterable[DepthRecord], out_dir, prefix: str, *,
                 num_shards: Optional[int] = None, records_per_shard: Optional[int] = None,
                 overwrite: bool = False, log_every: int = 1000) -> list[str]:
  """Validates and writes records; returns the shard paths in order.

  num_shards: deal records round-robin into exactly this many shards (default 1), so a stream
    of unknown length needs one pass; reading the shards in order interleaves the records.
  records_per_shard: fill shards one after another instead (their count is known at the end).
  Shards of an earlier run with the same prefix and dataset are replaced (and reported), so a
  glob never mixes runs; those of another dataset are refused unless `overwrite`. Partial
  shards of killed runs in out_dir are removed first.
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
  if out.exists() and not out.is_dir():
    raise outputs.OutputExistsError(f"{out} is a file, not a directory: give a directory for the shards")
  out.mkdir(parents=True, exist_ok=True)
  outputs.clean_partials(out)
  tmp = outputs.partial_path(out / prefix)
  tmp.mkdir()
  writers: list[ArrayRecordWriter] = []

  def writer(index):
    while len(writers) <= index:
      writers.append(ArrayRecordWriter(str(tmp / f"{len(writers)}.array_record"), WRITER_OPTIONS))
    return writers[index]

  try:
    if num_shards:
      writer(num_shards - 1)
    start, count, datasets = time.monotonic(), 0, set()
    for rec in records:
      rec.validate()
      datasets.add(rec.dataset)
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
    earlier = _check_collisions(out, prefix, datasets, overwrite)
    for w in writers:
      w.close()
    n = len(writers)
    paths = [out / shard_name(prefix, i, n) for i in range(n)]
    for i, path in enumerate(paths):
      os.replace(tmp / f"{i}.array_record", path)
    for old in earlier:
      if old not in paths:
        old.unlink()
    if earlier:
      logging.warning("%s: replaced %d shard(s) of an earlier run under %s", prefix, len(earlier), out)
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


@dataclasses.dataclass(frozen=True)
class RawRecord:
  """A serialised record and where it came from; `error` instead of `data` for a failed read."""

  where: str
  data: Optional[bytes] = None
  error: Optional[str] = None

  def decode(self) -> DepthRecord:
    """The validated record; RecordError naming `where` (shard and index) when it is bad."""
    if self.error is not None:
      raise RecordError(self.where, "record", self.error)
    with located(self.where):
      return DepthRecord.from_bytes(self.data).validate()


class ShardSource:
  """Random access to the records of ArrayRecord shards (a grain data source) that knows where
  each record lives: a corrupt read comes back as a RawRecord with an error, so one damaged
  record never stops a long run, and every message names the shard file and record index."""

  def __init__(self, paths_or_glob: PathsOrGlob):
    self.paths = shard_paths(paths_or_glob)
    counts = []
    for path in self.paths:
      try:
        reader = ArrayRecordReader(path)
        counts.append(reader.num_records())
        reader.close()
      except Exception as e:  # the reader's own errors name no file
        raise RecordError(path, "shard", f"not a readable ArrayRecord file ({e})") from e
    self._starts = np.cumsum([0] + counts)
    self._source = None

  def __len__(self) -> int:
    return int(self._starts[-1])

  def where(self, index: int) -> str:
    k = int(np.searchsorted(self._starts, index, side="right")) - 1
    return f"{self.paths[k]} record {index - self._starts[k]}"

  def __getitem__(self, index: int) -> RawRecord:
    if self._source is None:  # opened lazily, in the process (or worker) that reads
      self._source = grain.sources.ArrayRecordDataSource(self.paths)
    try:
      return RawRecord(self.where(index), data=self._source[int(index)])
    except Exception as e:  # Riegeli/ArrayRecord raise their own types for corrupt chunks
      return RawRecord(self.where(index), error=f"cannot read the record: {' '.join(str(e).split())[:300]}")

  def __getstate__(self):
    return {**self.__dict__, "_source": None}


def iter_raw(paths_or_glob: PathsOrGlob) -> Iterator[RawRecord]:
  """Every record of the shards, in order, undecoded (so a caller can count bad ones)."""
  source = ShardSource(paths_or_glob)
  for i in range(len(source)):
    yield source[i]


def iter_records(paths_or_glob: PathsOrGlob) -> Iterator[DepthRecord]:
  """Every record of the shards, in order; the first bad one raises RecordError naming it."""
  for raw in iter_raw(paths_or_glob):
    yield raw.decode()

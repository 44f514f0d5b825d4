"""The `depthvlm_bench` TFDS builder, without TensorFlow: built from the seed fixtures, read back
through TFDS's data source and through grain's own ArrayRecord source, equal to `ingest`."""

import functools
import json
import pathlib

import grain
import pytest
import tensorflow_datasets as tfds
from test_ingest import BENCH, FIXTURES, IBIMS, assert_same, depthlm_row, rgb_png

from depthvlm_jax.data import shards
from depthvlm_jax.data.ingest.run import ingest
from depthvlm_jax.data.records import RecordError
from depthvlm_jax.data.tfds_builder import (DepthvlmBench, DepthvlmBenchConfig, decode_example, grain_source,
                                            load_records, prepare)

# DepthLM does not say which depth iBims holds, so its config is the caller's (here: z).
IBIMS_Z = DepthvlmBenchConfig(name="depthlm_ibims_z", dataset="ibims", source="depthlm", params={"depth_type": "z"})
CASES = {  # config, manual dir, and the same source as `ingest` takes it
    "scannetpp": ("scannetpp", BENCH, ("depthvlm_bench", BENCH / "examples.jsonl"),
                  {"root": BENCH / "rgb", "depth_root": BENCH / "depth", "dataset": "scannetpp"}),
    "depthlm_ibims_z": (IBIMS_Z, IBIMS, ("depthlm", IBIMS / "ibims1_val.jsonl"),
                        {"dataset": "ibims", "depth_type": "z"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_build_and_read_back(tmp_path, case):
  if not FIXTURES.is_dir():
    pytest.skip(f"no fixtures at {FIXTURES}")
  config, manual_dir, (source, jsonl), params = CASES[case]
  paths, count = ingest(source, jsonl, tmp_path / "shards", **params)
  want = {r.key: r for r in shards.iter_records(paths)}
  builder = prepare(config, tmp_path / "tfds", manual_dir)
  assert builder.info.splits["test"].num_examples == count == len(want) == 6

  # TFDS's random-access source: each example holds ingest's very bytes; the records are equal.
  examples = builder.as_data_source("test")
  records = load_records(builder, "test")
  assert len(examples) == len(records) == 6
  for i, rec in enumerate(records):
    assert examples[i]["record"] == want[rec.key].to_bytes() and examples[i]["key"] == rec.key.encode()
    assert_same(rec, want[rec.key])
  assert sorted(r.key for r in records) == sorted(want)
  if isinstance(config, str):  # a registered config also loads by name
    by_name = tfds.data_source(f"depthvlm_bench/{config}", data_dir=tmp_path / "tfds")["test"]
    assert [e["record"] for e in by_name] == [e["record"] for e in examples]

  # grain on the files TFDS wrote, decoded with the features saved beside them (no builder class).
  files = sorted(str(p) for p in pathlib.Path(builder.data_dir).glob("depthvlm_bench-test.array_record-*"))
  assert files and files == list(grain_source(builder, "test").paths)
  features = tfds.builder_from_directory(builder.data_dir).info.features
  read = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(files)).map(
      functools.partial(decode_example, features))
  assert len(read) == 6
  for a, b in zip(read, records, strict=True):
    assert_same(a, b)


def test_bad_record_builds_nothing(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "a.png").write_bytes(rgb_png())
  rows = [depthlm_row(), depthlm_row(depth=[1.5, -1.0])]  # line 2 is bad
  (manual / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = DepthvlmBenchConfig(name="bad", dataset="ibims", source="depthlm", params={"depth_type": "z"})
  with pytest.raises(RecordError) as e:
    prepare(config, tmp_path / "tfds", manual)
  assert e.value.field == "depth" and f"{manual / 'x.jsonl'}:2" in str(e.value)
  assert list((tmp_path / "tfds" / "depthvlm_bench" / "bad").iterdir()) == []  # no version, no partial folder
  assert not DepthvlmBench(config=config, data_dir=tmp_path / "tfds").is_prepared()

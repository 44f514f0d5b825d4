"""Writers never delete what they did not write; killed runs' partial outputs are cleaned up."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import depthvlm_jax as dvlm
from depthvlm_jax import outputs
from depthvlm_jax.convert import safetensors_io
from depthvlm_jax.data import shards
from test_pipeline import make_record


@pytest.fixture(scope="module")
def tiny_model():
  cfg = dvlm.get_config("tiny")
  return dvlm.DepthVLM(cfg), dvlm.init_params(cfg, seed=0)


def tree(path):
  """Every file under path (relative name -> bytes), to prove nothing was touched."""
  return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
          for d, _, files in os.walk(path) for f in files}


def test_export_refuses_a_users_folder_a_file_and_the_cwd(tiny_model, tmp_path, monkeypatch):
  model, params = tiny_model
  user = tmp_path / "user"
  user.mkdir()
  (user / "notes.txt").write_text("my notes")
  (user / "config.json").write_text("{}")
  before = tree(user)
  with pytest.raises(outputs.OutputExistsError, match=r"user is not empty .* pass --overwrite"):
    dvlm.save_pretrained(str(user), model, params)
  single = tmp_path / "weights.bin"
  single.write_bytes(b"precious")
  with pytest.raises(outputs.OutputExistsError, match="weights.bin is a file"):
    dvlm.save_pretrained(str(single), model, params, overwrite=True)
  monkeypatch.chdir(user)
  for dst in (".", str(user)):
    with pytest.raises(outputs.OutputExistsError):
      dvlm.save_pretrained(dst, model, params)
  assert tree(user) == before and single.read_bytes() == b"precious"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["user", "weights.bin"]  # no partial left


def test_in_place_conversion_keeps_every_file_it_does_not_produce(tiny_model, tmp_path):
  model, params = tiny_model
  ckpt = tmp_path / "ckpt"
  dvlm.save_pretrained(str(ckpt), model, params, max_shard_bytes=500_000)  # sharded, with an index
  os.remove(ckpt / outputs.MARKER)  # now it looks like a checkpoint downloaded from the hub
  extras = {"tokenizer.json": "{}", "preprocessor_config.json": "{}", "generation_config.json": "{}",
            "chat_template.jinja": "x", "README.md": "# model card"}
  for name, text in extras.items():
    (ckpt / name).write_text(text)
  with pytest.raises(outputs.OutputExistsError):
    dvlm.save_pretrained(str(ckpt), *dvlm.load_pretrained(str(ckpt)), dtype="bfloat16")
  dvlm.save_pretrained(str(ckpt), *dvlm.load_pretrained(str(ckpt)), dtype="bfloat16", overwrite=True)
  names = sorted(os.listdir(ckpt))
  assert names == sorted([*extras, "config.json", safetensors_io.SINGLE, outputs.MARKER])  # old shards gone
  for name, text in extras.items():
    assert (ckpt / name).read_text() == text
  assert {str(x.dtype) for _, x in safetensors_io.read_tensors(str(ckpt))} == {"bfloat16"}
  # An export of ours is re-written without --overwrite.
  dvlm.save_pretrained(str(ckpt), model, params)
  assert json.load(open(ckpt / "config.json"))["dtype"] == "float32"


def test_ingest_refuses_another_datasets_shards_of_the_same_prefix(tmp_path, caplog):
  a = [make_record(i) for i in range(3)]
  b = [make_record(10 + i) for i in range(2)]
  for r in b:
    r.dataset = "other"
  first = shards.write_shards(a, tmp_path, "examples", num_shards=2)
  before = tree(tmp_path)
  with pytest.raises(outputs.OutputExistsError, match=r"shards examples-\*.array_record of dataset\(s\) \['test'\]"):
    shards.write_shards(b, tmp_path, "examples")
  assert tree(tmp_path) == before
  # The same dataset again: replaced, and said so.
  caplog.set_level("WARNING")
  again = shards.write_shards(a[:2], tmp_path, "examples")
  assert "replaced 2 shard(s) of an earlier run" in caplog.text
  assert [os.path.basename(p) for p in again] == sorted(os.listdir(tmp_path)) == ["examples-00000-of-00001.array_record"]
  assert set(first) != set(again)
  shards.write_shards(b, tmp_path, "examples", overwrite=True)
  assert [r.dataset for r in shards.iter_records(tmp_path)] == ["other", "other"]


def test_a_killed_run_leaves_only_a_partial_that_the_next_run_removes(tmp_path):
  out = tmp_path / "synth"
  proc = subprocess.Popen([sys.executable, "-m", "depthvlm_jax.cli.data", "synth", "--num=5000", f"--out={out}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while time.time() < deadline and not any(out.glob(".*.partial-*/*.array_record")):
      time.sleep(0.2)
    time.sleep(1.0)  # let it write some records
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  partial = list(out.glob(".*.partial-*"))
  assert len(partial) == 1 and os.listdir(partial[0]) and not list(out.glob("*.array_record"))
  live = outputs.partial_path(out / "other")  # a live writer's partial (ours) must survive
  live.mkdir()
  shards.write_shards([make_record(0)], out, "examples")
  assert not partial[0].exists() and live.exists()
  assert sorted(p.name for p in out.iterdir()) == sorted(["examples-00000-of-00001.array_record", live.name])


def test_results_json_is_strict_and_atomic(tmp_path):
  outputs.write_json(tmp_path / "m.json", {"delta1": np.float32("nan"), "rmse": (1.0, float("inf")), "n": np.int64(3)})
  text = (tmp_path / "m.json").read_text()
  assert json.loads(text) == {"delta1": None, "rmse": [1.0, None], "n": 3} and "NaN" not in text
  with pytest.raises(TypeError):
    outputs.write_json(tmp_path / "m.json", {"bad": object()})
  assert json.loads((tmp_path / "m.json").read_text())["n"] == 3  # the old file survives a failed write
  assert os.listdir(tmp_path) == ["m.json"]


def test_shard_read_errors_name_the_shard_and_record(tmp_path):
  good = shards.write_shards([make_record(i) for i in range(6)], tmp_path / "ok", "x")[0]
  data = bytearray(open(good, "rb").read())
  middle = len(data) // 2
  data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
  flipped = tmp_path / "flipped.array_record"
  flipped.write_bytes(bytes(data))
  raws = list(shards.iter_raw(str(flipped)))
  bad = [r for r in raws if r.error]
  assert len(raws) == 6 and len(bad) == 1 and "hash mismatch" in bad[0].error
  with pytest.raises(shards.RecordError, match=r"flipped.array_record record \d', field 'record': cannot read"):
    list(shards.iter_records(str(flipped)))
  truncated = tmp_path / "truncated.array_record"
  truncated.write_bytes(bytes(data[: middle]))
  with pytest.raises(shards.RecordError, match="truncated.array_record.*not a readable ArrayRecord file"):
    shards.ShardSource(str(truncated))
  garbage = tmp_path / "garbage.array_record"
  from array_record.python.array_record_module import ArrayRecordWriter
  w = ArrayRecordWriter(str(garbage), shards.WRITER_OPTIONS)
  w.write(make_record(0).to_bytes())
  w.write(b"\x93not msgpack at all")
  bad = make_record(1)
  bad.depth = bad.depth.copy()
  bad.depth[5, 5] = np.nan
  w.write(bad.to_bytes())  # written around validation, as a foreign tool might
  w.close()
  raws = list(shards.iter_raw(str(garbage)))
  raws[0].decode()
  for i, field in ((1, ""), (2, "depth")):
    with pytest.raises(shards.RecordError, match=rf"garbage.array_record record {i}.*{field}"):
      raws[i].decode()

"""The console scripts as a user runs them: one-line errors with exit code 2, and README's main
command path (synthetic shards -> tiny checkpoint -> prediction) end to end."""

import json
import os
import subprocess
import sys

import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from depthvlm_jax.data import shards
from test_pipeline import make_record


def cli(name, *args, cwd=None):
  """Runs `depthvlm-NAME args` as a fresh process (as the console script does)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", f"depthvlm_jax.cli.{name}", *args], capture_output=True, text=True,
                        cwd=cwd, env=env, timeout=600)


def error_line(proc):
  """The one line a failed command prints (absl's own log lines aside)."""
  lines = [l for l in proc.stderr.splitlines() if l and not l[:1] in "IW" or "error:" in l]
  assert len(lines) == 1, proc.stderr
  return lines[0]


def test_a_user_error_is_one_line_with_exit_code_2_and_the_traceback_only_with_verbose(tmp_path):
  bad = tmp_path / "ckpt"
  bad.mkdir()
  (bad / "config.json").write_text('{"text_config": ')
  proc = cli("convert", f"--src={bad}", f"--dst={tmp_path / 'out'}")
  assert proc.returncode == 2
  line = error_line(proc)
  assert line.startswith("convert.py: error: ") and f"{bad}/config.json: not valid JSON" in line
  assert "Traceback" not in proc.stderr
  verbose = cli("convert", f"--src={bad}", f"--dst={tmp_path / 'out'}", "--verbose")
  assert verbose.returncode == 2 and "Traceback" in verbose.stderr and "CheckpointError" in verbose.stderr
  assert not (tmp_path / "out").exists()
  unknown = cli("convert", "--preset=tiny", f"--dst={tmp_path / 'out'}", "--no_such_flag=1")
  assert unknown.returncode == 2 and "no_such_flag" in error_line(unknown)


@pytest.mark.parametrize("fx", ["0", "-300", "nan"])
def test_predict_refuses_a_focal_length_that_is_not_positive(tmp_path, fx):
  proc = cli("predict", "--model=unused", f"--canonical_fx={fx}", f"--out={tmp_path / 'pred'}")
  assert proc.returncode == 2 and "--canonical_fx" in error_line(proc) and "positive" in error_line(proc)
  assert not (tmp_path / "pred").exists()


def test_show_fails_on_a_bad_record_naming_shard_and_record(tmp_path):
  path = tmp_path / "x-00000-of-00001.array_record"
  w = ArrayRecordWriter(str(path), shards.WRITER_OPTIONS)
  w.write(make_record(0).to_bytes())
  bad = make_record(1)
  bad.image = b"\x89PNG not really"
  w.write(bad.to_bytes())
  w.close()
  proc = cli("data", "show", f"--input={path}")
  assert proc.returncode == 2
  line = error_line(proc)
  assert "1 of 2 records are bad" in line and f"{path} record 1" in line and "'image'" in line
  assert "test 1 records" in " ".join(proc.stdout.split())  # the good one is still listed


@pytest.mark.slow
def test_readme_main_command_path_scores_good_records_and_counts_bad_ones(tmp_path):
  synth = cli("data", "synth", "--num=6", f"--out={tmp_path / 'synth'}")
  assert synth.returncode == 0, synth.stderr
  w = ArrayRecordWriter(str(tmp_path / "synth" / "broken-00000-of-00001.array_record"), shards.WRITER_OPTIONS)
  w.write(b"not a record")
  w.close()
  convert = cli("convert", "--preset=tiny", f"--dst={tmp_path / 'tiny'}")
  assert convert.returncode == 0, convert.stderr
  args = [f"--model={tmp_path / 'tiny'}", "--canonical_fx=300", "--batch_size=7", "--max_batches=1"]
  pred = cli("predict", *args, f"--data={tmp_path / 'synth'}/*", f"--out={tmp_path / 'pred'}")
  assert pred.returncode == 0, pred.stderr
  result = json.loads((tmp_path / "pred" / "metrics.json").read_text())
  assert result["images_scored"] == 6 and result["images_skipped"] == 1
  assert 0 <= result["dense"]["delta1"] <= 1 and result["dense"]["rmse"] > 0
  assert "broken-00000-of-00001.array_record record 0" in pred.stderr  # the skip names the record
  assert len(list((tmp_path / "pred").glob("*.png"))) == 6
  # All bad: the run fails, and still leaves valid JSON that says why.
  bad = cli("predict", *args, f"--data={tmp_path / 'synth'}/broken-*", f"--out={tmp_path / 'pred'}")
  assert bad.returncode == 2 and "nothing could be scored" in error_line(bad)
  result = json.loads((tmp_path / "pred" / "metrics.json").read_text())
  assert result["images_scored"] == 0 and result["images_skipped"] == 1

"""The console scripts as a user runs them: one-line errors with exit code 2, and README's main
command path (synthetic shards -> tiny checkpoint -> prediction) end to end."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from depthvlm_jax.data import shards
from test_pipeline import make_record

REPO = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("override,match", [
    ("--config.data.canonical_fx=0", "config.data.canonical_fx=0.0: must be a positive focal length"),
    ("--config.data.canonical_fx=nan", "config.data.canonical_fx=nan"),
    ("--config.data.image_hw=(190,256)", r"config.data.image_hw=\(190, 256\): both sides must be positive multiples of 32"),
    ("--config.stages.stage1.batch_sise=8", "batch_sise"),
])
def test_train_refuses_a_bad_config_at_start_naming_the_key(tmp_path, override, match):
  proc = cli("train", "--config=configs/demo.py", f"--workdir={tmp_path / 'run'}", override, cwd=REPO)
  assert proc.returncode == 2 and re.search(match, error_line(proc)), proc.stderr
  assert not (tmp_path / "run").exists()


def test_train_refuses_an_unwritable_workdir(tmp_path):
  (tmp_path / "file").write_text("x")
  proc = cli("train", "--config=configs/demo.py", f"--workdir={tmp_path / 'file' / 'run'}", cwd=REPO)
  assert proc.returncode == 2 and f"{tmp_path / 'file' / 'run'}" in error_line(proc)


def test_predict_needs_the_settings_of_a_hugging_face_model(tmp_path):
  (tmp_path / "hf").mkdir()
  proc = cli("predict", f"--model={tmp_path / 'hf'}", f"--data={tmp_path}", f"--out={tmp_path / 'pred'}")
  assert proc.returncode == 2 and "not a training workdir" in error_line(proc) and "--config=" in error_line(proc)
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
def test_train_then_predict_writes_depth_at_each_records_own_size(tmp_path):
  """README's main command path, shrunk: train the demo config for a few steps, then predict on
  records with a bad one among them."""
  data = tmp_path / "data"
  short = ["--config.stages.stage1.steps=2", "--config.stages.stage2.steps=3", "--config.data.render.train=16",
           "--config.data.render.eval=8", f"--config.data.render.dir={data}",
           f"--config.data.train.synthetic.paths={data}/train", f"--config.eval.sources.synthetic.paths={data}/eval",
           "--config.eval.num_batches=1", "--config.checkpoint.every_steps=0", "--config.log.every_steps=1"]
  train = cli("train", "--config=configs/demo.py", f"--workdir={tmp_path / 'run'}", *short, cwd=REPO)
  assert train.returncode == 0, train.stderr
  run = tmp_path / "run"
  for name in ("experiment.json", "metrics.jsonl", "results.json", "loss_curve.png"):
    assert (run / name).is_file(), name
  steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines() if "loss" in l]
  assert steps[-1] == 5 and len(list((run / "pictures").glob("*.png"))) >= 1
  again = cli("train", "--config=configs/demo.py", f"--workdir={run}", "--config.stages.stage2.lr=0.5", *short, cwd=REPO)
  assert again.returncode == 2 and "config.stages.stage2.lr=0.5 but the run in" in error_line(again)
  check_export_to_transformers(run, tmp_path / "hf")
  w = ArrayRecordWriter(str(data / "eval" / "broken-00000-of-00001.array_record"), shards.WRITER_OPTIONS)
  w.write(b"not a record")
  w.close()
  pred = cli("predict", f"--model={run}", f"--data={data}/eval", f"--out={tmp_path / 'pred'}")
  assert pred.returncode == 0, pred.stderr
  result = json.loads((tmp_path / "pred" / "metrics.json").read_text())
  assert result["images_scored"] == 8 and result["images_skipped"] == 1
  assert 0 <= result["dense"]["delta1"] <= 1 and result["dense"]["rmse"] > 0
  assert "broken-00000-of-00001.array_record record 0" in pred.stderr  # the skip names the record
  for rec in shards.iter_records(f"{data}/eval/synthetic_eval-*"):
    depth = np.load(tmp_path / "pred" / f"{rec.key}.npy")
    assert depth.dtype == np.float32 and depth.shape == (rec.image_size[1], rec.image_size[0])
    assert np.isfinite(depth).all() and (depth > 0).all()
  # All bad: the run fails, and still leaves valid JSON that says why.
  bad = cli("predict", f"--model={run}", f"--data={data}/eval/broken-*", f"--out={tmp_path / 'pred'}")
  assert bad.returncode == 2 and "nothing could be scored" in error_line(bad)
  result = json.loads((tmp_path / "pred" / "metrics.json").read_text())
  assert result["images_scored"] == 0 and result["images_skipped"] == 1


def check_export_to_transformers(workdir, hf_dir):
  """A trained run exported with depthvlm-convert: transformers loads it with the project's
  logits, its depth_head.* tensors are there, and importing it again gives the same bytes."""
  from hf_utils import hf_inputs, make_batch, torch, transformers  # torch: test-only
  import jax
  import depthvlm_jax as dvlm
  from depthvlm_jax.convert import safetensors_io

  export = cli("convert", f"--src={workdir}", f"--dst={hf_dir}")
  assert export.returncode == 0, export.stderr
  model, params = dvlm.load_pretrained(str(workdir))
  assert any(k.startswith("depth_head.") for k in safetensors_io.tensor_shapes(str(hf_dir)))
  hf = transformers.Qwen3VLForConditionalGeneration.from_pretrained(hf_dir, attn_implementation="eager").eval()
  ids, mask, pixels = make_batch(model.cfg)
  with torch.no_grad():
    ref = hf(**hf_inputs(model.cfg, ids, mask, pixels)).logits.numpy()
  ours = np.asarray(model.apply({"params": params}, ids, pixels, mask).logits)
  valid = mask.astype(bool)
  assert ref[valid].std() > 0.1 and np.abs(ours[valid] - ref[valid]).max() <= 1e-4
  _, again = dvlm.load_pretrained(str(hf_dir))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8)),
               again, params)

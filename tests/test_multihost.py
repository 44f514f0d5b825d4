"""Two processes on localhost (jax.distributed, gloo collectives) run the sharded forward on a
mesh that spans both; the result equals the single-process forward. One process comes to the
forward 35 s late: the processes wait for each other at a barrier, not in a collective."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import depthvlm_jax as dvlm
from multihost_inputs import CFG, inputs


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_forward_equals_single_process(tmp_path):
  worker = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
  port = str(free_port())
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
  procs = [subprocess.Popen([sys.executable, worker, str(i), port, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [p.communicate(timeout=900)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  ids, pixels = inputs()
  ref = jax.jit(dvlm.DepthVLM(CFG).apply)({"params": dvlm.init_params(CFG, seed=3)}, ids, pixels)
  for i in range(2):
    out = np.load(tmp_path / f"out_{i}.npz")
    assert int(out["processes"]) == 2 and int(out["devices"]) == 8
    assert np.abs(out["logits"] - np.asarray(ref.logits)).max() <= 1e-5
    assert np.abs(out["depth"] - np.asarray(ref.depth)).max() <= 1e-5

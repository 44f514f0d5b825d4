"""One process of the two-process test (tests/test_multihost.py): joins the job on localhost,
runs the sharded forward on a mesh spanning both processes, saves the gathered outputs.
Process 1 reaches the forward later than gloo's 30 s deadline for its first collective: the
forward is compiled with sharding.compile_together, whose barrier waits for it."""

import os
import sys
import time

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

from depthvlm_jax import sharding  # noqa: E402


def main(process_id: int, port: str, out_dir: str) -> None:
  sharding.init_distributed(f"localhost:{port}", 2, process_id)
  import numpy as np
  from jax.experimental import multihost_utils

  import depthvlm_jax as dvlm
  from depthvlm_jax.data import pipeline
  from multihost_inputs import CFG, inputs

  params = dvlm.init_params(CFG, seed=3)
  mesh = sharding.make_mesh((2, 2, 2))  # data across the two processes
  shardings = sharding.param_shardings(dvlm.abstract_params(CFG), mesh)
  params = jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: np.asarray(x)[i]),
                        params, shardings)
  ids, pixels = inputs()
  half = len(ids) // 2
  local = {"ids": ids[process_id * half:(process_id + 1) * half],
           "pixels": pixels[process_id * half:(process_id + 1) * half]}
  batch = pipeline.to_global(local, mesh)
  if process_id == 1:
    time.sleep(35)  # a slow compile, beyond gloo's 30 s
  with sharding.use_mesh(mesh):
    forward = sharding.compile_together("forward", jax.jit(dvlm.DepthVLM(CFG).apply), {"params": params},
                                        batch["ids"], batch["pixels"], barrier_timeout_s=300)
    out = forward({"params": params}, batch["ids"], batch["pixels"])
  logits = multihost_utils.process_allgather(out.logits, tiled=True)
  depth = multihost_utils.process_allgather(out.depth, tiled=True)
  np.savez(os.path.join(out_dir, f"out_{process_id}.npz"), logits=logits, depth=depth,
           devices=jax.device_count(), processes=jax.process_count())


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(__file__))
  main(int(sys.argv[1]), sys.argv[2], sys.argv[3])

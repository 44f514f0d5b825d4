"""DepthVLM's recipe (configs/depthvlm.py) on TPU slices: per-device memory plans compiled on this
machine (libtpu, the tpu_plan extra), as JSON.

  python benchmarks/memory_plan.py [--presets=4b,8b] [--stages=stage1,stage2] [--slices=v5p-128,v6e-256]
      [--remat=none,full] [--batches=4,8,16,32,64,128] [--out=plans.json]

For each model, stage and slice: under each remat policy, the largest per-device batch of
--batches that fits in HBM (memory_plan.largest_batch: a few compiles each), and the policy to
run: the one that fits the larger batch, the earlier of --remat on a tie. One compile of the
4B step takes ~10 minutes on a 2-core CPU, and a search 2 to 4 of them; --out is rewritten after
each row, so a long run can be stopped and its rows kept.
"""

from __future__ import annotations

import json

from absl import app, flags

from depthvlm_jax import outputs
from depthvlm_jax.train import memory_plan
from demo_model import load_config

FLAGS = flags.FLAGS
flags.DEFINE_list("presets", ["4b", "8b"], "Model presets.")
flags.DEFINE_list("stages", ["stage1", "stage2"], "Stages of the recipe.")
flags.DEFINE_list("slices", ["v5p-128", "v6e-256"], "Slices (see SLICES).")
flags.DEFINE_list("remat", ["none", "full"], "Remat policies to compare (model.remat_policy).")
flags.DEFINE_list("batches", ["4", "8", "16", "32", "64", "128"], "Per-device batch candidates, increasing.")
flags.DEFINE_string("out", "", "Also write the JSON here, after every row.")

# Slice name -> (topology, mesh shape (data, fsdp, tensor), logical rules). A v5p chip (two
# TensorCores) and a v6e chip are one JAX device each: v5p-128 is 64 devices.
SLICES = {
    "v5p-128": ("v5p:4x4x4", (1, -1, 1), "fsdp"),
    "v6e-256": ("v6e:16x16", (1, -1, 4), "fsdp_tensor"),
}

GIB = float(memory_plan.GiB)


def _summary(p: memory_plan.Plan) -> dict:
  gib = lambda b: None if b is None else round(b / GIB, 2)
  return {"per_device_batch": p.per_device_batch, "global_batch": p.global_batch, "fits": p.fits,
          "peak_gib": gib(p.peak_bytes), "params_gib": gib(p.params_bytes), "opt_state_gib": gib(p.opt_state_bytes),
          "argument_gib": gib(p.argument_bytes), "output_gib": gib(p.output_bytes), "alias_gib": gib(p.alias_bytes),
          "temp_gib": gib(p.temp_bytes), "code_gib": gib(p.code_bytes), "compile_s": p.compile_s}


def row(preset: str, stage: str, slice_name: str, batches, policies) -> dict:
  topology, shape, rules = SLICES[slice_name]
  c = load_config("depthvlm", f"{preset},{stage}")
  c.mesh.update(shape=shape, rules=rules)
  out = {"preset": preset, "stage": stage, "slice": slice_name, "topology": topology, "rules": rules, "remat": {}}
  best = None
  for policy in policies:
    found, tried = memory_plan.largest_batch(c, stage, topology, policy, batches)
    out["remat"][policy] = {"largest": found and _summary(found), "compiled": [_summary(p) for p in tried]}
    out.update(mesh=tried[0].mesh, devices=tried[0].devices, hbm_gib=round(tried[0].hbm_bytes / GIB, 2),
               seq_len=tried[0].seq_len, image_hw=tried[0].image_hw)
    if found and (best is None or found.per_device_batch > best.per_device_batch):
      best = found
  out["chosen"] = best and {"remat_policy": best.remat_policy, **_summary(best)}
  return out


def main(argv):
  del argv
  batches = [int(b) for b in FLAGS.batches]
  rows = []
  for preset in FLAGS.presets:
    for stage in FLAGS.stages:
      for slice_name in FLAGS.slices:
        rows.append(row(preset, stage, slice_name, batches, FLAGS.remat))
        if FLAGS.out:
          outputs.write_json(FLAGS.out, rows)
  print(json.dumps(rows, indent=2))


if __name__ == "__main__":
  app.run(main)

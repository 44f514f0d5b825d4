"""Memory plans without the hardware: the real train step compiled ahead of time for a TPU
topology (libtpu compiles for chips this machine does not have), and its per-device bytes.

The state, batch, mesh and shardings are the trainer's own (step.state_shardings, the pipeline's
example shapes, the config's mesh); nothing is allocated. XLA's memory analysis of the compiled
program is what a run on that slice would hold: arguments (the donated state and the batch),
outputs (aliased onto the donated state), temporaries (activations, gradients, collectives'
buffers) and the program itself.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Optional, Sequence

import flax.linen as nn
import jax
from jax.experimental import topologies
from ml_collections import ConfigDict

from depthvlm_jax import experiment, sharding
from depthvlm_jax.convert import pretrained
from depthvlm_jax.data import pipeline
from depthvlm_jax.model.vlm import DepthVLM
from depthvlm_jax.train import checkpoint, step as step_lib

GiB = 1 << 30
# HBM per device (what JAX counts as one device: a chip, a megacore chip included), by device_kind.
HBM_BYTES = {"TPU v4": 32 * GiB, "TPU v5 lite": 16 * GiB, "TPU v5": 95 * GiB, "TPU v6 lite": 32 * GiB}
# The TPU compiler refuses a program that does not fit: "RESOURCE_EXHAUSTED: Ran out of memory on
# HBM, the total memory required for HLO temporaries (35.07G) exceeds available HBM (15.75G)."
_OUT_OF_MEMORY = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM")


@dataclasses.dataclass(frozen=True)
class Plan:
  """One compiled train step; bytes are per device. Absent analysis = the compiler refused it."""
  topology: str
  device_kind: str
  devices: int
  mesh: dict[str, int]
  rules: str
  stage: str
  remat_policy: str
  per_device_batch: int  # examples per device in one (micro)batch
  global_batch: int  # the stage's batch (all microbatches)
  seq_len: int
  image_hw: tuple[int, int]
  params_bytes: int  # from the state's shardings
  opt_state_bytes: int
  argument_bytes: Optional[int]  # from the compiled program: state + batch
  output_bytes: Optional[int]
  alias_bytes: Optional[int]  # outputs written into the donated arguments
  temp_bytes: Optional[int]  # activations, gradients, collective buffers
  code_bytes: Optional[int]
  peak_bytes: int  # argument + output - alias + temp + code (refused: the temporaries it asked for)
  hbm_bytes: int
  fits: bool
  compile_s: float

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def topology_devices(name: str) -> list:
  """The devices of a TPU topology such as "v5p:4x4x4" (64 chips), compiled for from any machine."""
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
  except (RuntimeError, ValueError) as e:
    raise RuntimeError(f"cannot describe TPU topology {name!r} ({' '.join(str(e).split())[:300]}): it needs "
                       "libtpu (pip install 'depthvlm_jax[tpu_plan]') and a name like v5p:4x4x4 or v6e:16x16") from e


def hbm_bytes(device) -> int:
  if device.device_kind not in HBM_BYTES:
    raise ValueError(f"no HBM size known for {device.device_kind!r}; known: {sorted(HBM_BYTES)}")
  return HBM_BYTES[device.device_kind]


def sharded_bytes(tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def with_overrides(c: ConfigDict, stage: str, num_devices: int, per_device_batch: Optional[int] = None,
                   remat_policy: Optional[str] = None) -> ConfigDict:
  """A copy of the experiment config with one stage's batch set per device and another remat policy."""
  if stage not in c.stages:
    raise experiment.ConfigError(f"no stage {stage!r} in config.stages (it has {list(c.stages)})")
  c = c.copy_and_resolve_references()
  if per_device_batch is not None:
    data, fsdp, _ = sharding.mesh_shape(tuple(c.mesh.shape), num_devices)
    c.stages[stage].batch_size = per_device_batch * data * fsdp * c.stages[stage].grad_accum
  if remat_policy is not None:
    c.model.remat_policy = remat_policy
  return c


def plan(c: ConfigDict, stage: str, topology: str, per_device_batch: Optional[int] = None,
         remat_policy: Optional[str] = None) -> Plan:
  """Compiles `stage`'s train step for the topology as `depthvlm-train` would run it there, on the
  config's mesh; per_device_batch and remat_policy replace the config's when given."""
  devices = topology_devices(topology)
  hbm = hbm_bytes(devices[0])
  c = with_overrides(c, stage, len(devices), per_device_batch, remat_policy)
  exp = experiment.build(c, num_devices=len(devices))
  st = next(s for s in exp.stages if s.name == stage)
  mesh = sharding.make_mesh(tuple(c.mesh.shape), devices=devices)
  rules = c.mesh.rules
  model = DepthVLM(exp.model)
  shardings = step_lib.state_shardings(model, mesh, rules, st.step)
  shapes = jax.eval_shape(lambda p: step_lib.init_state(p, st.step), nn.unbox(pretrained.abstract_params(exp.model)))
  state = checkpoint.abstract_like(shapes, shardings)
  data_cfg = exp.train_pipeline(st)
  batch_sharding = step_lib.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((st.batch_size, *x.shape), x.dtype, sharding=batch_sharding)
           for k, x in pipeline.example_shapes(data_cfg).items()}
  train_step = step_lib.jit_step(step_lib.make_step(model, exp.task, st.step), shardings, mesh)
  start = time.time()
  with sharding.use_mesh(mesh, rules):
    lowered = train_step.lower(state, batch)
  memory, peak = None, None
  try:
    memory = lowered.compile().memory_analysis()
  except jax.errors.JaxRuntimeError as e:
    peak = out_of_memory_bytes(str(e))
    if peak is None:
      raise
  if memory is not None:
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
  per_device = st.batch_size // (st.step.grad_accum * mesh.shape["data"] * mesh.shape["fsdp"])
  return Plan(
      topology=topology, device_kind=devices[0].device_kind, devices=len(devices), mesh=dict(mesh.shape), rules=rules,
      stage=stage, remat_policy=exp.model.remat_policy, per_device_batch=per_device,
      global_batch=st.batch_size, seq_len=batch["input_ids"].shape[1], image_hw=tuple(exp.config.data.image_hw),
      params_bytes=sharded_bytes(state.params), opt_state_bytes=sharded_bytes(state.opt_state),
      argument_bytes=memory and memory.argument_size_in_bytes, output_bytes=memory and memory.output_size_in_bytes,
      alias_bytes=memory and memory.alias_size_in_bytes, temp_bytes=memory and memory.temp_size_in_bytes,
      code_bytes=memory and memory.generated_code_size_in_bytes, peak_bytes=peak, hbm_bytes=hbm,
      fits=memory is not None and peak <= hbm, compile_s=round(time.time() - start, 1))


def stage_plans(c: ConfigDict, topology: str) -> list[Plan]:
  """Every stage of the experiment, as configured, compiled for the topology."""
  return [plan(c, name, topology) for name in c.stages]


def out_of_memory_bytes(message: str) -> Optional[int]:
  """The bytes the compiler asked for, from its out-of-memory refusal (None: another error)."""
  found = _OUT_OF_MEMORY.search(message)
  if not found:
    return None
  unit = {"K": 1 << 10, "M": 1 << 20, "G": GiB, "T": 1 << 40}
  return int(float(found.group(1)) * unit[found.group(2)])


def largest_batch(c: ConfigDict, stage: str, topology: str, remat_policy: str,
                  candidates: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128)) -> tuple[Optional[Plan], list[Plan]]:
  """The plan with the largest candidate per-device batch that fits, and every plan compiled.

  Few compiles: peak memory grows about linearly with the batch, so the first two candidates
  predict where to look; the search then steps up or down from there until it brackets the
  largest batch that fits (fits at k, not at the next candidate).
  """
  tried: dict[int, Plan] = {}

  def fits(i: int) -> bool:
    if candidates[i] not in tried:
      tried[candidates[i]] = plan(c, stage, topology, candidates[i], remat_policy)
    return tried[candidates[i]].fits

  if not fits(0):
    return None, list(tried.values())
  if len(candidates) == 1 or not fits(1):
    return tried[candidates[0]], list(tried.values())
  p0, p1 = tried[candidates[0]], tried[candidates[1]]
  per_example = max(p1.peak_bytes - p0.peak_bytes, 1) / (candidates[1] - candidates[0])
  room = (p0.hbm_bytes - p0.peak_bytes) / per_example + candidates[0]
  i = max([1] + [k for k, b in enumerate(candidates) if b <= room])
  while i + 1 < len(candidates) and fits(i):
    i += 1
  while i > 0 and not fits(i):
    i -= 1
  best = tried[candidates[i]]
  return best, sorted(tried.values(), key=lambda p: p.per_device_batch)

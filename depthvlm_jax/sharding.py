"""Device mesh, logical-axis rules and multi-host start-up.

Modules name their parameter and activation axes logically ("embed", "mlp", ...); this table
is the one place that decides which mesh axis each name is split over. Presets: pure data
parallel, FSDP, FSDP + tensor parallel.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

_ACTIVATIONS = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)

RULES: dict[str, tuple[tuple[str, Any], ...]] = {
    "data_parallel": _ACTIVATIONS,
    "fsdp": _ACTIVATIONS + (
        ("embed", "fsdp"), ("vit_embed", "fsdp"), ("vit_merged", "fsdp"), ("conv_in", "fsdp"),
    ),
    "fsdp_tensor": _ACTIVATIONS + (
        ("embed", "fsdp"), ("vit_embed", "fsdp"), ("vit_merged", "fsdp"), ("conv_in", "fsdp"),
        ("mlp", "tensor"), ("vit_mlp", "tensor"), ("q_heads", "tensor"), ("kv_heads", "tensor"),
        ("vit_qkv", "tensor"), ("vit_heads", "tensor"), ("vocab", "tensor"), ("conv_out", "tensor"),
    ),
}


def mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes for `num_devices`; one size may be -1 (= all remaining devices)."""
  shape = list(shape)
  if len(shape) != 3 or shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape} must have 3 sizes (data, fsdp, tensor) with at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"{num_devices} devices do not divide into mesh {shape}")
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, have {num_devices}")
  return tuple(shape)


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices=None) -> Mesh:
  """Mesh over ("data", "fsdp", "tensor"); one size may be -1 (= all remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(shape, len(devices))
  # Auto axes: XLA's sharding propagation fills in what the logical constraints leave open.
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  try:
    return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=auto)
  except NotImplementedError:  # an axis that is no product of torus axes (tensor=4 on v6e 16x16): split one
    from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
    return Mesh(mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True), MESH_AXES,
                axis_types=auto)


def _rules(rules: str | Sequence) -> tuple:
  return RULES[rules] if isinstance(rules, str) else tuple(rules)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: str | Sequence = "fsdp_tensor"):
  """Makes `mesh` and the logical-axis `rules` current, so the modules' activation constraints
  take effect inside `jax.jit`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(_rules(rules)):
    yield


def _fit(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drops mesh axes that do not divide a dimension (tiny models, odd vocabularies)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    out.append(axes if size > 1 and dim % size == 0 else None)
  return P(*out)


def param_shardings(boxed_abstract_params, mesh: Mesh, rules: str | Sequence = "fsdp_tensor"):
  """NamedShardings for a (boxed, e.g. from `jax.eval_shape(model.init, ...)`) param tree."""
  logical_specs = nn.get_partition_spec(boxed_abstract_params)
  mesh_specs = nn.logical_to_mesh(logical_specs, _rules(rules))
  unboxed = nn.unbox(boxed_abstract_params)
  return jax.tree.map(lambda spec, x: NamedSharding(mesh, _fit(spec, x.shape, mesh)),
                      mesh_specs, unboxed, is_leaf=lambda s: isinstance(s, P))


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of a global array as numpy on every process (gathered when other processes hold
  parts of it)."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sharded_fraction(params) -> float:
  """Fraction of parameter bytes that are split across devices (not replicated)."""
  total = split = 0
  for x in jax.tree.leaves(params):
    total += x.size
    if not x.sharding.is_fully_replicated:
      split += x.size
  return split / max(total, 1)


def init_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
  """Multi-host start-up; call before any other JAX work. Without a coordinator JAX detects the
  cluster (TPU pods, SLURM, Open MPI, Kubernetes), and fails when there is none."""
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except (ValueError, RuntimeError) as e:
    raise RuntimeError(f"jax.distributed.initialize failed ({e}): give distributed.coordinator_address, "
                       "num_processes and process_id, or run inside a cluster that JAX detects") from e


def barrier(name: str, timeout_s: int) -> None:
  """Waits until every process got here, through the coordination service: no device program,
  so the wait may be long (a collective would fail after its backend's own deadline: 30 s for
  gloo on CPU). A no-op in one process."""
  from orbax.checkpoint import multihost  # pylint: disable=import-outside-toplevel
  multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


def compile_together(name: str, jitted, *args, barrier_timeout_s: int):
  """`jitted` compiled for `args`, returned once every process has compiled it (`name`: unique
  in the run, names the barrier). Processes compile at different speeds; the first collective
  of a program that one process runs while another still compiles would wait on the backend's
  deadline instead of this barrier's."""
  compiled = jitted.lower(*args).compile()
  barrier(f"compiled {name}", barrier_timeout_s)
  return compiled

"""Memory plans: the real stage-2 train step of a tiny model compiled for a 4-chip TPU topology on
this CPU machine (skipped where libtpu cannot load), and the batch search's few compiles."""

import importlib.util
from pathlib import Path

import flax.linen as nn
import jax
import pytest

from depthvlm_jax import experiment, sharding
from depthvlm_jax.convert import pretrained
from depthvlm_jax.train import memory_plan

TOPOLOGY = "v5p:2x2x1"  # 4 chips, the smallest v5p slice
RECIPE = Path(__file__).parents[1] / "configs" / "depthvlm.py"


def tiny_recipe():
  """The DepthVLM recipe's stage 2 on the tiny preset, small images; the per-token depth head
  (the DPT head's convolutions take minutes to compile for TPU on a CPU)."""
  spec = importlib.util.spec_from_file_location("depthvlm_recipe", RECIPE)
  recipe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(recipe)
  c = recipe.get_config("4b,stage2")
  c.model = experiment.model_section("tiny", dtype="bfloat16", depth_head=dict(kind="mlp"))
  c.data.image_hw = (64, 96)
  return c


@pytest.fixture(scope="module")
def plans():
  try:
    memory_plan.topology_devices(TOPOLOGY)
  except RuntimeError as e:
    pytest.skip(f"libtpu cannot load here: {e}")
  return {policy: memory_plan.plan(tiny_recipe(), "stage2", TOPOLOGY, per_device_batch=2, remat_policy=policy)
          for policy in ("none", "full")}


def test_plan_reports_the_sharded_state_and_the_compiled_bytes(plans):
  p = plans["none"]
  assert (p.device_kind, p.devices, p.mesh) == ("TPU v5", 4, {"data": 1, "fsdp": 4, "tensor": 1})
  assert (p.per_device_batch, p.global_batch, p.hbm_bytes) == (2, 8, 95 * memory_plan.GiB)
  params = jax.tree.leaves(nn.unbox(pretrained.abstract_params(experiment.model_config(tiny_recipe()))))
  total = sum(x.size * x.dtype.itemsize for x in params)
  assert total / 4 <= p.params_bytes < total / 2  # FSDP over 4: a quarter each, but a few tensors stay whole
  assert 0 < p.opt_state_bytes <= 2 * p.params_bytes  # Adam's two moments of the trainable part
  state = p.params_bytes + p.opt_state_bytes
  assert p.argument_bytes >= state and p.alias_bytes >= state  # the donated state is updated in place
  assert p.peak_bytes == p.argument_bytes + p.output_bytes - p.alias_bytes + p.temp_bytes + p.code_bytes
  assert p.fits and p.compile_s > 0


def test_full_remat_holds_fewer_temporaries(plans):
  assert plans["full"].remat_policy == "full"
  assert plans["full"].temp_bytes < plans["none"].temp_bytes


def fake_plans(hbm: int, fixed: int, per_example: int):
  """A stand-in for memory_plan.plan whose peak grows linearly with the batch; counts compiles."""
  compiled = []

  def fake(c, stage, topology, per_device_batch, remat_policy):
    del c, stage, topology
    compiled.append(per_device_batch)
    peak = fixed + per_example * per_device_batch
    return memory_plan.Plan(
        topology="t", device_kind="k", devices=1, mesh={}, rules="fsdp", stage="s", remat_policy=remat_policy,
        per_device_batch=per_device_batch, global_batch=per_device_batch, seq_len=1, image_hw=(32, 32),
        params_bytes=0, opt_state_bytes=0, argument_bytes=0, output_bytes=0, alias_bytes=0, temp_bytes=peak,
        code_bytes=0, peak_bytes=peak, hbm_bytes=hbm, fits=peak <= hbm, compile_s=0.0)

  return fake, compiled


@pytest.mark.parametrize("hbm, expected", [(100, None), (105, 1), (125, 4), (170, 8), (180, 16), (10_000, 64)])
def test_batch_search_brackets_the_largest_fit_in_few_compiles(monkeypatch, hbm, expected):
  fake, compiled = fake_plans(hbm, fixed=100, per_example=5)
  monkeypatch.setattr(memory_plan, "plan", fake)
  best, tried = memory_plan.largest_batch(None, "s", "t", "full", (1, 2, 4, 8, 16, 32, 64))
  assert (best and best.per_device_batch) == expected
  assert len(compiled) == len(set(compiled)) <= 4
  assert [p.per_device_batch for p in tried] == sorted(compiled)


def test_an_out_of_memory_refusal_reads_as_the_bytes_asked_for():
  refusal = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
             "(35.07G) exceeds available HBM (15.75G).")  # libtpu's words, for 16k tiny examples on v5e:2x2
  assert memory_plan.out_of_memory_bytes(refusal) == int(35.07 * memory_plan.GiB)
  assert memory_plan.out_of_memory_bytes("INVALID_ARGUMENT: a bad shape") is None


def test_a_mesh_axis_that_is_no_product_of_torus_axes_splits_one():
  """On v6e:4x4, tensor=8 is no product of the torus axes (4, 4): one of them is split in two."""
  try:
    devices = memory_plan.topology_devices("v6e:4x4")
  except RuntimeError as e:
    pytest.skip(f"libtpu cannot load here: {e}")
  mesh = sharding.make_mesh((1, -1, 8), devices)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 8}
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)

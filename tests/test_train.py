"""The train step: frozen parts have no optimizer state and no backward pass, a mesh step equals
the single-device step, non-finite batches are skipped and counted, bad configs fail at start."""

import math

import jax
import numpy as np
import pytest

from depthvlm_jax import experiment, sharding, tasks
from depthvlm_jax.convert import pretrained
from depthvlm_jax.convert.keymap import flatten
from depthvlm_jax.data import pipeline
from depthvlm_jax.model.vlm import DepthVLM
from depthvlm_jax.train import flops, optimizer, step as step_lib

HW = (64, 96)


def tiny_config(**stage_kw):
  c = experiment.base_config()
  c.data.image_hw = HW
  c.data.canonical_fx = 100.0
  c.stages = {"stage1": experiment.stage_section(
      steps=10, batch_size=8, lr=1e-2, **{**dict(trainable=("depth_head/.*",), loss_weights={"depth": 1.0},
                                              detach_head_inputs=True), **stage_kw})}
  return c


@pytest.fixture(scope="module")
def batch():
  cfg = pipeline.PipelineConfig(task=tasks.get("depthvlm"), sources=(pipeline.Source(synthetic=8, synthetic_seed=5),),
                                image_hw=HW, batch_size=8, canonical_fx=100.0, shuffle=False)
  return next(iter(pipeline.build(cfg)))


@pytest.fixture(scope="module")
def tiny():
  exp = experiment.build(tiny_config())
  return exp, DepthVLM(exp.model), pretrained.init_params(exp.model, seed=1)


def run_step(exp, model, params, batch, mesh_shape=(1, 1, 1), rules="fsdp", stage=None):
  stage = stage or exp.stages[0]
  mesh = sharding.make_mesh(mesh_shape, devices=jax.devices()[:math.prod(mesh_shape)])
  shardings = step_lib.state_shardings(model, mesh, rules, stage.step)
  state = jax.jit(lambda p: step_lib.init_state(p, stage.step), out_shardings=shardings)(params)
  fn = step_lib.jit_step(step_lib.make_step(model, exp.task, stage.step), shardings, mesh)
  with sharding.use_mesh(mesh, rules):
    new, metrics = fn(state, pipeline.to_global(batch, mesh))
  return jax.device_get(new), jax.device_get(metrics)


def test_frozen_parameters_have_no_optimizer_state(tiny):
  exp, model, params = tiny
  state = step_lib.init_state(params, exp.stages[0].step)
  head = sum(x.size for k, x in flatten(params).items() if k.startswith("depth_head/"))
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
  assert moments == 2 * head  # Adam's mu and nu of the head, nothing for the frozen backbone
  assert {k.split("/")[0] for k in optimizer.split(params, ("depth_head/.*",))[0]} == {"depth_head"}
  with pytest.raises(ValueError, match=r"match no parameter"):
    optimizer.check_patterns(params, ("depth-head/.*",))


def test_stage1_step_runs_no_backward_through_the_backbone(tiny, batch, unrolled_scans):
  exp, model, params = tiny
  stage = exp.stages[0]
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  shardings = step_lib.state_shardings(model, mesh, "fsdp", stage.step)
  state = jax.jit(lambda p: step_lib.init_state(p, stage.step), out_shardings=shardings)(params)
  fn = step_lib.jit_step(step_lib.make_step(model, exp.task, stage.step), shardings, mesh)
  with sharding.use_mesh(mesh, "fsdp"):
    compiled = fn.lower(state, pipeline.to_global(batch, mesh)).compile()
  cost = compiled.cost_analysis()
  step_flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
  f = flops.step_flops(exp.model, 8, HW, batch["input_ids"].shape[1], ("depth_head/.*",))
  print(f"stage-1 step {step_flops:.3e} FLOPs; forward {f.forward:.3e} + 2 x head {f.head:.3e}")
  assert f.head < 0.9 * f.forward  # the backbone is a real share of the forward
  assert abs(step_flops - (f.forward + 2 * f.head)) <= 0.1 * (f.forward + 2 * f.head)
  assert f.train == f.forward + 2 * f.head


def test_non_finite_batches_are_skipped_and_counted(tiny, batch):
  exp, model, params = tiny
  bad = dict(batch)
  bad["depth"] = batch["depth"].copy()
  bad["depth"][0, 3, 3] = np.nan
  bad["depth_valid"] = batch["depth_valid"].copy()
  bad["depth_valid"][0, 3, 3] = True
  state, metrics = run_step(exp, model, params, bad)
  assert not metrics["finite"] and int(state.skipped) == 1 and int(state.skipped_in_row) == 1
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)  # nothing moved
  inf_pixels = dict(batch)
  inf_pixels["image"] = batch["image"].astype(np.float32)
  inf_pixels["image"][1, 0, 0, 0] = np.inf
  state, metrics = run_step(exp, model, params, inf_pixels)
  assert not metrics["finite"] and int(state.skipped) == 1
  state, metrics = run_step(exp, model, params, batch)
  assert metrics["finite"] and int(state.skipped) == 0
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(state.params["depth_head"]),
                                               jax.tree.leaves(params["depth_head"]))]
  assert max(moved) > 0


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (virtual) devices")
def test_mesh_step_equals_single_device_step(tiny, batch):
  """Loss, gradient norm and updated parameters on fsdp=4 x tensor=2 equal one device's.

  The parameters are compared as a whole (relative L2): Adam's first update is +-lr for every
  element whatever its gradient's size, so an element whose gradient is float noise (1e-9) can
  flip sign under another summation order; that is not a difference of the computation."""
  exp, model, params = tiny
  stage = experiment.stage_of("stage2", experiment.stage_section(
      steps=10, batch_size=8, lr=1e-3, trainable=(".*",), loss_weights={"depth": 1.0, "ce": 1.0}))
  one, m1 = run_step(exp, model, params, batch, stage=stage)
  eight, m8 = run_step(exp, model, params, batch, (1, 4, 2), "fsdp_tensor", stage=stage)
  for key in ("loss", "grad_norm", "loss/depth", "loss/ce"):
    assert abs(float(m8[key]) - float(m1[key])) <= 1e-5 * abs(float(m1[key])), key
  a, b, before = (np.concatenate([x.ravel() for x in jax.tree.leaves(t)]) for t in (one.params, eight.params, params))
  diff = np.linalg.norm(a - b) / np.linalg.norm(a)
  print(f"loss {float(m1['loss']):.7f} vs {float(m8['loss']):.7f}; parameters relative L2 {diff:.2e} "
        f"(the update itself: {np.linalg.norm(a - before) / np.linalg.norm(a):.2e})")
  assert diff <= 1e-5


def test_gradient_accumulation_equals_the_whole_batch(tiny, batch):
  """Two microbatches of 4 give the loss and update of one batch of 8 (SILog is a mean over
  images, so equal halves average exactly)."""
  exp, model, params = tiny
  stages = [experiment.stage_of("stage1", experiment.stage_section(
      steps=10, batch_size=8, lr=1e-2, trainable=("depth_head/.*",), loss_weights={"depth": 1.0},
      detach_head_inputs=True, grad_accum=k)) for k in (1, 2)]
  (one, m1), (two, m2) = (run_step(exp, model, params, batch, stage=s) for s in stages)
  assert float(m2["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-5)
  assert float(m2["grad_norm"]) == pytest.approx(float(m1["grad_norm"]), rel=1e-5)
  a, b = (np.concatenate([x.ravel() for x in jax.tree.leaves(t.params["depth_head"])]) for t in (one, two))
  assert np.linalg.norm(a - b) / np.linalg.norm(a) <= 1e-5


@pytest.mark.parametrize("key,value,match", [
    ("data.image_hw", (64, 90), r"config.data.image_hw=\(64, 90\): both sides must be positive multiples of 32"),
    ("stages.stage1.batch_size", 6, r"config.stages.stage1.batch_size=6: .* divide over the mesh's data x fsdp = 4"),
    ("stages.stage1.lr", -1.0, r"config.stages.stage1.lr=-1.0"),
    ("data.canonical_fx", 0.0, r"config.data.canonical_fx=0.0"),
    ("task", "dense", r"unknown task 'dense'"),
    ("model.init_from", "gs://b/qwen", r"config.model.init_from='gs://b/qwen': URLs .* mount the bucket"),
    ("data.tokenizer", "s3://b/tok", r"config.data.tokenizer='s3://b/tok': URLs"),
    ("data.render.scene.fov", 60, r"config.data.render.scene: .*'fov'"),
])
def test_bad_configs_fail_at_start_naming_the_key(key, value, match):
  c = tiny_config()
  node = c
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(experiment.ConfigError, match=match):
    experiment.build(c, num_devices=4)


def test_url_workdirs_and_data_paths_are_refused_not_written_locally(tmp_path, monkeypatch):
  from depthvlm_jax.train import trainer
  monkeypatch.chdir(tmp_path)
  c = tiny_config()
  with pytest.raises(experiment.ConfigError, match=r"--workdir='gs://b/run': URLs"):
    trainer.prepare_workdir("gs://b/run", c)
  c.data.train = {"mix": experiment.source("gs://b/train/*")}
  with pytest.raises(experiment.ConfigError, match=r"config.data.train.mix.paths='gs://b/train/\*': URLs"):
    experiment.build(c)
  assert not list(tmp_path.iterdir())


def test_init_from_a_qwen3_vl_checkpoint_keeps_its_weights_and_starts_the_head_fresh(tmp_path):
  from depthvlm_jax import save_pretrained
  from depthvlm_jax.train import trainer
  c = tiny_config()
  exp = experiment.build(c)
  backbone = exp.model.replace(depth_head=None)
  weights = pretrained.init_params(backbone, seed=7)
  save_pretrained(str(tmp_path / "qwen"), DepthVLM(backbone), weights)
  c.model.init_from = str(tmp_path / "qwen")
  exp = experiment.build(c)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  shardings = sharding.param_shardings(pretrained.abstract_params(exp.model), mesh, "fsdp")
  params = trainer.init_params(exp, shardings)
  for k, v in flatten(weights).items():
    np.testing.assert_array_equal(np.asarray(flatten(params)[k]), np.asarray(v))
  assert set(params["depth_head"]) == set(pretrained.init_params(exp.model)["depth_head"])
  c.model.text.num_hidden_layers = 3  # another model than the checkpoint's
  with pytest.raises(experiment.ConfigError, match="holds another model than config.model"):
    trainer.init_params(experiment.build(c), None)


def test_workdir_overwrite_removes_only_an_earlier_runs_own_files(tmp_path):
  from depthvlm_jax import outputs
  from depthvlm_jax.train import trainer
  c = tiny_config()
  user = tmp_path / "user"
  (user / "pictures").mkdir(parents=True)
  (user / "pictures" / "holiday.png").write_bytes(b"mine")
  with pytest.raises(outputs.OutputExistsError, match="pass --overwrite"):
    trainer.prepare_workdir(str(user), c)
  trainer.prepare_workdir(str(user), c, overwrite=True)
  assert (user / "pictures" / "holiday.png").read_bytes() == b"mine"  # not ours: never removed
  run = tmp_path / "run"
  assert trainer.prepare_workdir(str(run), c) == (run, None)
  (run / "results.json").write_text("{}")
  other = tiny_config()
  other.stages.stage1.lr = 0.5
  other.model.init_from = "/elsewhere"  # where the weights first came from is no difference on resume
  with pytest.raises(experiment.ConfigError, match=r"config.stages.stage1.lr=0.5 but the run in .* \(no checkpoint\)"):
    trainer.prepare_workdir(str(run), other)
  other.stages.stage1.lr = c.stages.stage1.lr
  other.model.param_dtype = "bfloat16"  # sorts after init_from
  with pytest.raises(experiment.ConfigError, match=r"config.model.param_dtype='bfloat16'"):
    trainer.prepare_workdir(str(run), other)
  assert (run / "results.json").exists()
  trainer.prepare_workdir(str(run), c)  # the same experiment, killed before its first checkpoint: starts again
  assert not (run / "results.json").exists()
  (run / "results.json").write_text("{}")
  trainer.prepare_workdir(str(run), other, overwrite=True)
  assert not (run / "results.json").exists()


def test_a_model_with_16_pixel_tokens_gets_batches_with_its_own_token_count():
  """The token size is the model's (patch x merge), not a constant: spatial_merge_size=1 gives
  (64/16) x (96/16) = 24 image tokens per row, and the step runs on the experiment's batches."""
  c = tiny_config()
  c.model.vision.spatial_merge_size = 1
  exp = experiment.build(c)
  data = experiment.pipeline_config(exp, (pipeline.Source(synthetic=4, synthetic_seed=5),), 4, train=False)
  host = next(iter(pipeline.build(data)))
  assert (host["input_ids"] == exp.model.image_token_id).sum(1).tolist() == [24] * 4
  _, metrics = run_step(exp, DepthVLM(exp.model), pretrained.init_params(exp.model, seed=1), host)
  assert metrics["finite"] and np.isfinite(metrics["loss"])

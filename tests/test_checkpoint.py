"""A checkpoint saved on one mesh restores on another (8 devices fsdp=8 -> 4 devices fsdp=2 x
tensor=2): the same parameters, optimizer state and data position, and training goes on."""

import flax.linen as nn
import jax
import numpy as np

from depthvlm_jax import experiment, sharding, tasks
from depthvlm_jax.convert import pretrained
from depthvlm_jax.data import pipeline
from depthvlm_jax.model.vlm import DepthVLM
from depthvlm_jax.train import checkpoint, step as step_lib
from test_train import HW, tiny_config


def stage_on(mesh, rules, exp, model):
  stage = exp.stages[0]
  shardings = step_lib.state_shardings(model, mesh, rules, stage.step)
  fn = step_lib.jit_step(step_lib.make_step(model, exp.task, stage.step), shardings, mesh)
  return stage, shardings, fn


def train_step(fn, mesh, rules, state, host):
  with sharding.use_mesh(mesh, rules):
    return fn(state, pipeline.to_global(host, mesh))


def test_checkpoint_saved_on_8_devices_restores_on_4_with_tensor_parallelism(tmp_path):
  exp = experiment.build(tiny_config(trainable=(".*",), detach_head_inputs=False))
  model = DepthVLM(exp.model)
  data_cfg = pipeline.PipelineConfig(task=tasks.get("depthvlm"), sources=(pipeline.Source(synthetic=32),),
                                     image_hw=HW, batch_size=8, canonical_fx=100.0)
  big = sharding.make_mesh((1, 8, 1), devices=jax.devices()[:8])
  stage, shardings, fn = stage_on(big, "fsdp", exp, model)
  params = jax.device_put(pretrained.init_params(exp.model, seed=2), shardings.params)
  state = jax.jit(lambda p: step_lib.init_state(p, stage.step), out_shardings=shardings)(params)
  data = iter(pipeline.build(data_cfg))
  for _ in range(2):
    state, _ = train_step(fn, big, "fsdp", state, next(data))
  mngr = checkpoint.manager(str(tmp_path))
  checkpoint.save(mngr, state, checkpoint.Position(2, stage.name, 2), data)
  mngr.wait_until_finished()
  saved = jax.device_get(state)
  host = next(data)
  _, expected = train_step(fn, big, "fsdp", state, host)

  small = sharding.make_mesh((1, 2, 2), devices=jax.devices()[:4])
  stage, shardings, fn = stage_on(small, "fsdp_tensor", exp, model)
  assert any("tensor" in str(s.spec) for s in jax.tree.leaves(shardings.params))  # really another layout
  abstract = jax.eval_shape(lambda p: step_lib.init_state(p, stage.step), nn.unbox(pretrained.abstract_params(exp.model)))
  restored_data = iter(pipeline.build(data_cfg))
  params, opt_state = checkpoint.restore(mngr, 2, checkpoint.abstract_like(abstract, shardings), restored_data)
  mngr.close()
  for got, want in ((params, saved.params), (opt_state, saved.opt_state)):
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)
  assert {len(x.sharding.device_set) for x in jax.tree.leaves(params)} == {4}
  restored_host = next(restored_data)
  np.testing.assert_array_equal(restored_host["image"], host["image"])  # the data goes on where it stopped
  state = step_lib.TrainState(jax.device_put(saved.step, shardings.step), params, opt_state,
                              jax.device_put(saved.skipped, shardings.skipped),
                              jax.device_put(saved.skipped_in_row, shardings.skipped_in_row))
  _, metrics = train_step(fn, small, "fsdp_tensor", state, restored_host)
  assert np.isfinite(float(metrics["loss"]))
  np.testing.assert_allclose(float(metrics["loss"]), float(expected["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["grad_norm"]), float(expected["grad_norm"]), rtol=1e-4)

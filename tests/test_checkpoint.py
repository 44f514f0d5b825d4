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


def test_checkpoint_saved_on_8_devices_restores_on_4_with_tensor_parallelism(tmp_path):
  exp = experiment.build(tiny_config())
  model = DepthVLM(exp.model)
  stage = exp.stages[0]
  data_cfg = pipeline.PipelineConfig(task=tasks.get("depthvlm"), sources=(pipeline.Source(synthetic=16),),
                                     image_hw=HW, batch_size=4, canonical_fx=100.0)
  big = sharding.make_mesh((1, 8, 1), devices=jax.devices()[:8])
  shardings = step_lib.state_shardings(model, big, "fsdp", stage.step)
  params = jax.device_put(pretrained.init_params(exp.model, seed=2), shardings.params)
  state = jax.jit(lambda p: step_lib.init_state(p, stage.step), out_shardings=shardings)(params)
  rng = np.random.default_rng(0)  # Adam moments as after some steps: not zeros, which restore trivially
  moments = jax.tree.map(lambda x, s: jax.device_put(rng.normal(size=x.shape).astype(x.dtype), s),
                         state.opt_state, shardings.opt_state)
  state = state._replace(opt_state=moments, step=jax.device_put(np.int32(3), shardings.step))
  data = iter(pipeline.build(data_cfg))
  next(data)
  mngr = checkpoint.manager(str(tmp_path))
  checkpoint.save(mngr, state, checkpoint.Position(3, stage.name, 3), data)
  mngr.wait_until_finished()
  saved, host = jax.device_get(state), next(data)

  small = sharding.make_mesh((1, 2, 2), devices=jax.devices()[:4])
  shardings = step_lib.state_shardings(model, small, "fsdp_tensor", stage.step)
  assert any("tensor" in str(s.spec) for s in jax.tree.leaves(shardings.params))  # really another layout
  abstract = jax.eval_shape(lambda p: step_lib.init_state(p, stage.step), nn.unbox(pretrained.abstract_params(exp.model)))
  restored_data = iter(pipeline.build(data_cfg))
  params, opt_state = checkpoint.restore(mngr, 3, checkpoint.abstract_like(abstract, shardings), restored_data)
  mngr.close()
  for got, want in ((params, saved.params), (opt_state, saved.opt_state)):
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)
  assert {len(x.sharding.device_set) for x in jax.tree.leaves(params)} == {4}
  restored_host = next(restored_data)
  np.testing.assert_array_equal(restored_host["image"], host["image"])  # the data goes on where it stopped

  # Training goes on from the restored state as from the saved one.
  fn = step_lib.jit_step(step_lib.make_step(model, exp.task, stage.step), shardings, small)
  with sharding.use_mesh(small, "fsdp_tensor"):
    restored_state = step_lib.TrainState(jax.device_put(saved.step, shardings.step), params, opt_state,
                                         jax.device_put(saved.skipped, shardings.skipped),
                                         jax.device_put(saved.skipped_in_row, shardings.skipped_in_row))
    _, got = fn(restored_state, pipeline.to_global(restored_host, small))
    _, want = fn(jax.device_put(saved, shardings), pipeline.to_global(host, small))
  assert np.isfinite(float(got["loss"])) and float(got["loss"]) == float(want["loss"])
  assert float(got["grad_norm"]) == float(want["grad_norm"])

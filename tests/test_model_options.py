"""Run-time model options change memory/kernels, never the function computed."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_utils import make_batch, tiny
from depthvlm_jax.convert.pretrained import abstract_params, init_params
from depthvlm_jax.model.config import get_config
from depthvlm_jax.model.vlm import DepthVLM


@pytest.fixture(scope="module")
def setup():
  cfg = tiny()
  ids, mask, pixels = make_batch(cfg, seed=11)
  return cfg, init_params(cfg, seed=11), (jnp.asarray(ids, jnp.int32), jnp.asarray(pixels), jnp.asarray(mask, jnp.int32))


def loss_and_grads(cfg, params, args):
  real = args[2][..., None]  # padding positions' outputs and gradients are impl-defined (layers.attention)

  def loss(p):
    out = DepthVLM(cfg).apply({"params": p}, *args)
    return jnp.sum(out.logits ** 2 * real) / (jnp.sum(real) * out.logits.shape[-1]) + jnp.mean(jnp.log(out.depth))
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("option", [dict(remat_policy="full"), dict(attention_impl="jax")])
def test_option_keeps_outputs_and_gradients(setup, option):
  cfg, params, args = setup
  ref_loss, ref_grads = loss_and_grads(cfg, params, args)
  loss, grads = loss_and_grads(cfg.replace(**option), params, args)
  assert abs(float(loss) - float(ref_loss)) <= 1e-5
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grads, ref_grads))
  assert max(diffs) <= 1e-4
  assert all(np.isfinite(d) for d in diffs)


def test_bfloat16_compute_stays_close(setup):
  cfg, params, args = setup
  ref = jax.jit(DepthVLM(cfg).apply)({"params": params}, *args)
  out = jax.jit(DepthVLM(cfg.replace(dtype="bfloat16")).apply)({"params": params}, *args)
  assert out.logits.dtype == jnp.bfloat16 and out.depth.dtype == jnp.float32
  valid = np.asarray(args[2]).astype(bool)
  assert np.abs(np.asarray(out.logits, np.float32)[valid] - np.asarray(ref.logits)[valid]).max() < 0.05
  assert np.abs(np.asarray(out.depth) - np.asarray(ref.depth)).max() / np.abs(np.asarray(ref.depth)).max() < 0.05


def test_every_parameter_has_logical_axes():
  specs = nn.get_partition_spec(abstract_params(get_config("tiny")))
  leaves = jax.tree.leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec) or x is None)
  missing = [jax.tree_util.keystr(p) for p, s in leaves if s is None or len(s) == 0]
  assert not missing, missing


def test_bad_config_and_inputs_raise_clear_errors(setup):
  cfg, params, args = setup
  with pytest.raises(ValueError, match="remat_policy"):
    get_config("tiny", remat_policy="sometimes")
  with pytest.raises(ValueError, match="mrope_section"):
    from depthvlm_jax.model.config import validate
    validate(cfg.replace(text=cfg.text.__class__(**{**cfg.text.__dict__, "mrope_section": (1, 1, 1)})))
  ids, pixels, mask = args
  with pytest.raises(ValueError, match="multiples of 32"):
    DepthVLM(cfg).apply({"params": params}, ids, pixels[:, :40], mask)
  no_image_row = ids.at[0].set(jnp.where(ids[0] == cfg.image_token_id, 7, ids[0]))
  with pytest.raises(ValueError, match=r"rows \[0\] have \[0\] image placeholder"):
    DepthVLM(cfg).apply({"params": params}, no_image_row, pixels, mask)

"""The forward on an 8-device CPU mesh (fsdp=4, tensor=2) equals the single-device forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_utils import make_batch, tiny
from depthvlm_jax import sharding
from depthvlm_jax.convert.pretrained import abstract_params, init_params
from depthvlm_jax.model.vlm import DepthVLM


# (sharded, total) parameter elements of the tiny model on this mesh, as the README states them.
# fsdp_tensor replicates only the q/k-norm scales (4 layers x 2 x 16) and the 1-channel output
# bias; fsdp also the vectors whose only axis is a tensor-parallel one (biases of qkv, fc1, DPT).
SHARDED = {"fsdp_tensor": (466_840, 466_969), "fsdp": (465_216, 466_969)}


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (virtual) devices")
@pytest.mark.parametrize("rules", ["fsdp_tensor", "fsdp"])
def test_mesh_forward_equals_single_device(rules):
  cfg = tiny()
  model = DepthVLM(cfg)
  params = init_params(cfg, seed=3)
  ids, mask, pixels = make_batch(cfg, batch=4, seed=3)
  args = (jnp.asarray(ids, jnp.int32), jnp.asarray(pixels), jnp.asarray(mask, jnp.int32))
  ref = jax.jit(model.apply)({"params": params}, *args)

  mesh = sharding.make_mesh((1, 4, 2))
  shardings = sharding.param_shardings(abstract_params(cfg), mesh, rules)
  sharded = jax.device_put(params, shardings)
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  args = jax.device_put(args, batch_sharding)
  with sharding.use_mesh(mesh, rules):
    out = jax.jit(model.apply)({"params": sharded}, *args)
  frac = sharding.sharded_fraction(sharded)
  print(f"{rules}: {frac:.4%} of parameters sharded")
  total = sum(x.size for x in jax.tree.leaves(params))
  split, want_total = SHARDED[rules]
  assert (total, frac) == (want_total, split / want_total), (rules, total, frac)
  assert np.abs(np.asarray(out.logits) - np.asarray(ref.logits)).max() <= 1e-5
  assert np.abs(np.asarray(out.depth) - np.asarray(ref.depth)).max() <= 1e-5
  assert not out.logits.sharding.is_fully_replicated


def test_make_mesh_validates_shape():
  with pytest.raises(ValueError, match="needs"):
    sharding.make_mesh((3, 1, 1), devices=jax.devices()[:2])
  assert sharding.make_mesh((1, -1, 2), devices=jax.devices()[:4]).shape == {"data": 1, "fsdp": 2, "tensor": 2}

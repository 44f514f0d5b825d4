"""Every attention impl computes the reference's function on real tokens: splash (Pallas, interpreted
off TPU), `jax.nn.dot_product_attention` with the cuDNN path's arguments, and cuDNN itself on GPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_utils import make_batch, tiny
from depthvlm_jax import sharding
from depthvlm_jax.convert.pretrained import init_params
from depthvlm_jax.model.layers import AttentionMask, attention
from depthvlm_jax.model.vlm import DepthVLM

# name: (batch, length, q heads, kv heads, head dim, left padding per row or None for no mask).
# Neither length is a multiple of splash's 128; 300 is padded to 3 blocks along queries and keys,
# the first of which is all padding in row 1.
CASES = {
    "causal_left_padding_gqa": (2, 300, 8, 2, 16, (0, 137)),
    "vision_unmasked": (2, 100, 4, 4, 8, None),
}


def make_inputs(b, l, hq, hkv, d, pad, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(kq, (b, l, hq, d), dtype)
  k = jax.random.normal(kk, (b, l, hkv, d), dtype)
  v = jax.random.normal(kv, (b, l, hkv, d), dtype)
  mask = None if pad is None else AttentionMask(jnp.arange(l)[None, :] >= jnp.asarray(pad)[:, None])
  return q, k, v, mask


def assert_equal_on_real_tokens(out, ref, mask, tol):
  """Padding queries see no real key; their (finite) values differ between impls by design."""
  out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
  assert np.isfinite(out).all()
  real = slice(None) if mask is None else np.asarray(mask.kv_valid)
  np.testing.assert_allclose(out[real], ref[real], rtol=tol, atol=tol)


@pytest.mark.parametrize("impl", ["splash", "jax"])
@pytest.mark.parametrize("case", CASES)
def test_impl_equals_reference(impl, case):
  q, k, v, mask = make_inputs(*CASES[case])
  ref = attention(q, k, v, mask, "xla")
  out = jax.jit(lambda q, k, v, m: attention(q, k, v, m, impl))(q, k, v, mask)
  assert_equal_on_real_tokens(out, ref, mask, 1e-5)


@pytest.mark.parametrize("impl", ["splash", "jax"])
def test_kv_cache_step_equals_reference(impl):
  """One new query at cache slot 9 of 16, some slots padding: "jax" takes the whole offset mask,
  splash falls back to the reference."""
  q, k, v, _ = make_inputs(2, 16, 8, 2, 16, None)
  valid = jnp.arange(16)[None, :] >= jnp.asarray([0, 4])[:, None]
  mask = AttentionMask(valid, jnp.asarray(9, jnp.int32))
  ref = attention(q[:, 9:10], k, v, mask, "xla")
  out = jax.jit(lambda q, k, v, m: attention(q, k, v, m, impl))(q[:, 9:10], k, v, mask)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_splash_gradients_equal_reference():
  q, k, v, mask = make_inputs(*CASES["causal_left_padding_gqa"])
  real = np.asarray(mask.kv_valid)[:, :, None, None]

  def grads(impl):
    loss = lambda q, k, v: jnp.sum(jnp.where(real, attention(q, k, v, mask, impl), 0) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

  for got, want in zip(grads("splash"), grads("xla")):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_splash_under_a_mesh_equals_reference():
  """Batch over data, heads over tensor: each shard runs the kernel on its slice (shard_map)."""
  q, k, v, mask = make_inputs(*CASES["causal_left_padding_gqa"])
  ref = attention(q, k, v, mask, "xla")
  with sharding.use_mesh(sharding.make_mesh((2, 1, 2), jax.devices()[:4])):
    fn = jax.jit(lambda q, k, v, m: attention(q, k, v, m, "splash"))
    assert "shard_map" in str(jax.make_jaxpr(fn)(q, k, v, mask))
    out = fn(q, k, v, mask)
  assert_equal_on_real_tokens(out, ref, mask, 1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN flash attention needs an NVIDIA GPU")
@pytest.mark.parametrize("case", CASES)
def test_cudnn_equals_reference(case):
  """cuDNN takes bfloat16 only: the reference runs in float32 on the same rounded inputs."""
  b, l, hq, hkv, _, pad = CASES[case]
  q, k, v, mask = make_inputs(b, l, hq, hkv, 64, pad, jnp.bfloat16)
  ref = attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask, "xla")
  out = jax.jit(lambda q, k, v, m: attention(q, k, v, m, "cudnn"))(q, k, v, mask)
  assert_equal_on_real_tokens(out, ref, mask, 2e-2)


def test_tiny_model_with_splash_equals_xla():
  cfg = tiny()
  ids, mask, pixels = make_batch(cfg, seed=3)
  args = (jnp.asarray(ids, jnp.int32), jnp.asarray(pixels), jnp.asarray(mask, jnp.int32))
  params = init_params(cfg, seed=3)
  ref = jax.jit(DepthVLM(cfg).apply)({"params": params}, *args)
  out = jax.jit(DepthVLM(cfg.replace(attention_impl="splash")).apply)({"params": params}, *args)
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(out.logits)[real], np.asarray(ref.logits)[real], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out.depth), np.asarray(ref.depth), rtol=1e-5)

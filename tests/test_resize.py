"""The align-corners resize equals torch's F.interpolate, forward and backward, and its cost
grows with the output (a gather per tap), not with output x input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.test_util import check_grads

from depthvlm_jax.model import resize

CASES = [
    ((3, 5), (6, 10)),     # x2 (the fusion blocks)
    ((4, 6), (13, 17)),    # upsample, non-integer ratio
    ((9, 12), (4, 5)),     # downsample
    ((6, 7), (1, 1)),      # single output pixel: torch samples index 0
    ((1, 5), (4, 3)),      # single input row
    ((5, 4), (5, 9)),      # one axis unchanged
]


def torch_resize(x: np.ndarray, out_hw):
  t = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_(True)
  return t, F.interpolate(t, size=out_hw, mode="bilinear", align_corners=True).permute(0, 2, 3, 1)


@pytest.mark.parametrize("in_hw,out_hw", CASES)
def test_forward_and_gradient_match_torch(in_hw, out_hw):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, *in_hw, 3)).astype(np.float32)
  g = rng.standard_normal((2, *out_hw, 3)).astype(np.float32)
  t, ref = torch_resize(x, out_hw)
  ref.backward(torch.tensor(g))
  out, vjp = jax.vjp(lambda v: resize.resize_bilinear_align_corners(v, out_hw), jnp.asarray(x))
  assert out.shape == (2, *out_hw, 3)
  np.testing.assert_allclose(np.asarray(out), ref.detach().numpy(), rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(g))[0]), t.grad.permute(0, 2, 3, 1).numpy(),
                             rtol=0, atol=1e-5)


def test_second_derivatives_are_consistent():
  """The transposed map's own VJP is the forward map: checked numerically to second order."""
  x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 4, 6, 2)), jnp.float32)
  check_grads(lambda v: jnp.sin(resize.resize_bilinear_align_corners(v, (7, 11))), (x,), order=2,
              modes=("rev",), eps=1e-2)


def test_transposed_table_is_the_exact_transpose():
  for n_in, n_out in ((5, 10), (12, 4), (1, 3), (7, 7)):
    idx, w = resize.linear_taps(n_in, n_out)
    dense = np.zeros((n_out, n_in))
    np.add.at(dense, (np.arange(n_out)[:, None], idx), w)
    t_idx, t_w = resize.transpose_taps(idx, w, n_in)
    dense_t = np.zeros((n_in, n_out))
    np.add.at(dense_t, (np.arange(n_in)[:, None], t_idx), t_w)
    np.testing.assert_array_equal(dense_t, dense.T)


def test_cost_grows_with_the_output_not_output_times_input():
  """XLA's FLOP count of forward+backward at 4x the pixels is ~4x (a dense matrix would be 8x)."""
  def flops(h, w):
    f = jax.jit(jax.grad(lambda v: jnp.sum(resize.resize_bilinear_align_corners(v, (2 * h, 2 * w)) ** 2)))
    cost = f.lower(jax.ShapeDtypeStruct((1, h, w, 8), jnp.float32)).cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])

  ratio = flops(64, 80) / flops(32, 40)
  assert 3.5 < ratio < 4.5, ratio

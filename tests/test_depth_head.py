"""Parity of the JAX depth heads with PyTorch compositions shaped like the DepthVLM release.

The torch references (tests/torch_dpt.py) reproduce the release's structure and state_dict
keys; their weights reach the Flax heads through the project's own HF key table. Weights are
random everywhere (biases and LayerNorm affine included) so that a dropped bias or a wrong
quirk shows.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

from torch_dpt import TorchDPT, TorchMLP, TorchRCU, randomize

from depthvlm_jax.convert import hf_config, keymap
from depthvlm_jax.model import depth_head as dh
from depthvlm_jax.model import layers
from depthvlm_jax.model.config import DepthHeadConfig, get_config, validate

torch.set_num_threads(1)

TINY = DepthHeadConfig(features=16, out_channels=(8, 16, 32, 32), mlp_hidden=64)
C, B, GRID = 24, 2, (3, 5)


def via_keymap(state_dict, prefix, subtree=None):
  """Release tensors placed under the HF key `prefix` -> the Flax subtree at `subtree`
  (default: the prefix's own path), through the project's key table."""
  tensors = {prefix + k: v.detach().numpy() for k, v in state_dict.items()}
  tree = keymap.hf_to_params(tensors, get_config("tiny"))
  for part in (subtree or prefix.rstrip(".").replace(".", "/")).split("/"):
    tree = tree[part]
  return {"params": jax.tree.map(jnp.asarray, tree)}


def nchw(x):
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def max_diff(jax_out, torch_out):
  return float(np.max(np.abs(np.asarray(jax_out) - torch_out.detach().numpy())))


def rand(*shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def check_tree_matches(module, params, *args):
  """The converted tree must have exactly the structure and shapes that init produces."""
  ref = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), *args)))
  assert jax.tree.structure(ref) == jax.tree.structure(params)
  assert jax.tree.map(jnp.shape, ref) == jax.tree.map(jnp.shape, params)


# ---------------------------------------------------------------- per-op parity

@pytest.mark.parametrize("kernel,use_bias", [(3, True), (3, False), (1, True)])
def test_conv_matches_torch(kernel, use_bias):
  tconv = randomize(tnn.Conv2d(6, 10, kernel, 1, kernel // 2, bias=use_bias))
  x = rand(2, 7, 9, 6)
  out = dh._conv(10, kernel, use_bias, "conv", "float32", "float32").apply(
      via_keymap(tconv.state_dict(), "depth_head.scratch.output_conv1."), x)
  with torch.no_grad():
    ref = tconv(nchw(x)).permute(0, 2, 3, 1)
  assert max_diff(out, ref) < 1e-5


@pytest.mark.parametrize("stride", [8, 4, 2])
def test_patch_deconv_matches_conv_transpose(stride):
  tdeconv = randomize(tnn.ConvTranspose2d(5, 7, stride, stride))
  params = via_keymap(tdeconv.state_dict(), "depth_head.resize_layers.0.", "depth_head/resize_layers_0")
  x = rand(2, 3, 4, 5)
  out = dh.PatchDeconv(7, stride).apply(params, x)
  with torch.no_grad():
    ref = tdeconv(nchw(x)).permute(0, 2, 3, 1)
  assert out.shape == (2, 3 * stride, 4 * stride, 7)
  assert max_diff(out, ref) < 1e-5


def test_layernorm_matches_torch():
  tln = randomize(tnn.LayerNorm(C, eps=1e-5))
  x = 3.0 * rand(2, 15, C) + 1.0
  out = layers.LayerNorm(eps=1e-5, axis_name="embed").apply(via_keymap(tln.state_dict(), "depth_head.norm."), x)
  assert max_diff(out, tln(torch.from_numpy(x))) < 1e-5


def test_residual_unit_adds_relu_of_input():
  """The skip adds relu(x) (in-place ReLU), and the test can tell it from adding x."""
  trcu = randomize(TorchRCU(8))
  x = rand(1, 5, 6, 8)
  out = dh.ResidualConvUnit(8).apply(via_keymap(trcu.state_dict(), "depth_head.scratch.refinenet1.resConfUnit1."), x)
  with torch.no_grad():
    ref = trcu(nchw(x)).permute(0, 2, 3, 1)
    trcu.activation.inplace = False  # now the skip adds x itself
    ref_plain = trcu(nchw(x)).permute(0, 2, 3, 1)
  assert max_diff(out, ref) < 1e-5
  assert max_diff(out, ref_plain) > 0.1


# ---------------------------------------------------------------- whole heads

@pytest.fixture(scope="module")
def tiny_dpt():
  # std 0.15: with 0.1 the 11-conv-deep map is nearly flat (std ~0.01), with 0.2 it blows up.
  tmodel = randomize(TorchDPT(C, TINY), std=0.15)
  feats = [rand(B, GRID[0] * GRID[1], C, seed=k) for k in range(4)]
  return tmodel, via_keymap(tmodel.state_dict(), "depth_head."), feats


@pytest.mark.parametrize("output_size", [None, (50, 70)])
def test_dpt_head_matches_torch(tiny_dpt, output_size):
  tmodel, params, feats = tiny_dpt
  head = dh.DPTHead(TINY)
  check_tree_matches(head, params, feats, GRID)
  out = head.apply(params, feats, GRID, output_size)
  with torch.no_grad():
    ref = tmodel([torch.from_numpy(f) for f in feats], GRID, output_size)
  expected = output_size or (GRID[0] * 32, GRID[1] * 32)
  assert out.shape == (B, *expected) and out.dtype == jnp.float32
  assert float(ref.std()) > 0.1  # a non-degenerate map, so the comparison means something
  assert max_diff(out, ref) < 1e-4


def test_dpt_head_bfloat16_returns_float32(tiny_dpt):
  _, params, feats = tiny_dpt
  out = jax.eval_shape(lambda p, f: dh.DPTHead(TINY, dtype="bfloat16").apply(p, f, GRID), params, feats)
  assert out.shape == (B, 96, 160) and out.dtype == jnp.float32


def test_dpt_param_count_release():
  head = dh.DPTHead(DepthHeadConfig())
  feats = [jax.ShapeDtypeStruct((1, 4, 2560), jnp.float32)] * 4
  shapes = jax.eval_shape(lambda f: head.init(jax.random.key(0), f, (2, 2)), feats)
  assert sum(x.size for x in jax.tree.leaves(shapes)) == 35_145_921


@pytest.mark.parametrize("output_size", [None, (50, 70)])
def test_mlp_head_matches_torch(output_size):
  tmodel = randomize(TorchMLP(C, TINY), std=0.5)  # O(1) pre-activations: tanh-GELU would show
  params = via_keymap(tmodel.state_dict(), "depth_head.")
  x = rand(B, GRID[0] * GRID[1], C)
  head = dh.MLPHead(TINY)
  check_tree_matches(head, params, x, GRID)
  out = head.apply(params, [None, None, None, x], GRID, output_size)  # DPT-style call reads the last
  with torch.no_grad():
    ref = tmodel(torch.from_numpy(x), GRID, output_size)
  assert out.shape == tuple(ref.shape) and out.dtype == jnp.float32
  assert max_diff(out, ref) < 1e-4


def test_factory_and_validation():
  assert isinstance(dh.make_depth_head(TINY), dh.DPTHead)
  assert isinstance(dh.make_depth_head(DepthHeadConfig(kind="mlp")), dh.MLPHead)
  with pytest.raises(ValueError, match="depth_head.kind"):
    dh.make_depth_head(DepthHeadConfig(kind="conv"))
  feats = [jax.ShapeDtypeStruct((1, 14, C), jnp.float32)] * 4
  with pytest.raises(ValueError, match="3x5"):
    jax.eval_shape(lambda f: dh.DPTHead(TINY).init(jax.random.key(0), f, GRID), feats)


@pytest.mark.parametrize("kind", ["dpt", "mlp"])
def test_exp_activation_is_exp_of_the_release_heads_last_output(tiny_dpt, kind):
  """activation="exp" changes only the last map to metres: log(depth) is the softplus head's
  pre-activation, softplus^-1(depth) = log(expm1(depth))."""
  _, params, feats = tiny_dpt
  if kind == "mlp":
    params = dh.MLPHead(TINY).init(jax.random.key(1), feats[-1], GRID)
    params = jax.tree.map(lambda x: x * 5.0, params)  # O(1) outputs on both sides of zero
  cfg = dataclasses.replace(TINY, kind=kind)
  release = dh.make_depth_head(cfg).apply(params, feats, GRID)
  exp = dh.make_depth_head(dataclasses.replace(cfg, activation="exp")).apply(params, feats, GRID)
  pre = np.log(np.expm1(np.asarray(release, np.float64)))
  assert float(np.std(pre)) > 0.3 and (pre < 0).any() and (pre > 0).any()
  np.testing.assert_allclose(np.log(np.asarray(exp, np.float64)), pre, atol=2e-4)
  model = get_config("tiny").replace(depth_head=dataclasses.replace(cfg, activation="exp"))
  assert hf_config.from_hf(hf_config.to_hf(model)).depth_head.activation == "exp"  # exported and re-imported
  with pytest.raises(ValueError, match="depth_head.activation"):
    validate(model.replace(depth_head=dataclasses.replace(cfg, activation="relu")))


def test_strided_head_resizes_its_last_map_as_torch_does(tiny_dpt):
  """output_stride=2: the release's head at half the output size (rounded up), its last map
  (before the activation) resized align-corners to the output size, as torch computes it."""
  tmodel, params, feats = tiny_dpt
  size = (50, 71)
  cfg = dataclasses.replace(TINY, activation="exp", output_stride=2)
  out = dh.DPTHead(cfg).apply(params, feats, GRID, size)
  assert out.shape == (B, *size)
  with torch.no_grad():
    half = tmodel([torch.from_numpy(f) for f in feats], GRID, (25, 36))
    pre = torch.log(torch.expm1(half.double()))  # softplus^-1: the map before the activation
    ref = F.interpolate(pre[:, None], size=size, mode="bilinear", align_corners=True)[:, 0].numpy()
  assert float(np.std(ref)) > 0.3
  np.testing.assert_allclose(np.log(np.asarray(out, np.float64)), ref, atol=2e-4)
  model = get_config("tiny").replace(depth_head=cfg)
  assert hf_config.from_hf(hf_config.to_hf(model)).depth_head.output_stride == 2  # exported and re-imported
  for bad in (dataclasses.replace(cfg, output_stride=0), dataclasses.replace(cfg, kind="mlp")):
    with pytest.raises(ValueError, match="depth_head.output_stride"):
      validate(model.replace(depth_head=bad))

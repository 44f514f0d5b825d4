"""Parity of the JAX depth heads with PyTorch compositions shaped like the DepthVLM release.

The torch modules below reproduce the release's structure and state_dict keys (including
the in-place ReLU of its residual conv units); weights are random with std 0.1 everywhere
(biases and LayerNorm affine included) so that a dropped bias or a wrong quirk shows.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

from depthvlm_jax.model import depth_head as dh
from depthvlm_jax.model import layers
from depthvlm_jax.model.config import DepthHeadConfig

torch.set_num_threads(1)

TINY = DepthHeadConfig(features=16, out_channels=(8, 16, 32, 32), mlp_hidden=64)
C, B, GRID = 24, 2, (3, 5)


# ---------------------------------------------------------------- torch reference (release layout)

class TorchRCU(tnn.Module):
  def __init__(self, f):
    super().__init__()
    self.conv1 = tnn.Conv2d(f, f, 3, 1, 1, bias=True)
    self.conv2 = tnn.Conv2d(f, f, 3, 1, 1, bias=True)
    self.activation = tnn.ReLU(inplace=True)  # overwrites x, so the skip adds relu(x)

  def forward(self, x):
    out = self.conv2(self.activation(self.conv1(self.activation(x))))
    return out + x


class TorchFusion(tnn.Module):
  def __init__(self, f, has_skip):
    super().__init__()
    self.out_conv = tnn.Conv2d(f, f, 1, 1, 0, bias=True)
    if has_skip:
      self.resConfUnit1 = TorchRCU(f)
    self.resConfUnit2 = TorchRCU(f)

  def forward(self, *xs, size=None):
    out = xs[0]
    if len(xs) == 2:
      out = out + self.resConfUnit1(xs[1])
    out = self.resConfUnit2(out)
    mod = {"scale_factor": 2} if size is None else {"size": size}
    out = F.interpolate(out, **mod, mode="bilinear", align_corners=True)
    return self.out_conv(out)


class TorchDPT(tnn.Module):
  def __init__(self, c, cfg):
    super().__init__()
    f, oc = cfg.features, cfg.out_channels
    self.norm = tnn.LayerNorm(c, eps=cfg.norm_eps)
    self.projects = tnn.ModuleList([tnn.Conv2d(c, o, 1) for o in oc])
    self.resize_layers = tnn.ModuleList(
        [tnn.ConvTranspose2d(oc[k], oc[k], 8 >> k, 8 >> k) for k in range(3)] + [tnn.Identity()])
    self.scratch = tnn.Module()
    for k in range(4):
      setattr(self.scratch, f"layer{k + 1}_rn", tnn.Conv2d(oc[k], f, 3, 1, 1, bias=False))
      setattr(self.scratch, f"refinenet{k + 1}", TorchFusion(f, has_skip=k < 3))
    self.scratch.output_conv1 = tnn.Conv2d(f, f // 2, 3, 1, 1)
    self.scratch.output_conv2 = tnn.Sequential(
        tnn.Conv2d(f // 2, 32, 3, 1, 1), tnn.ReLU(True), tnn.Conv2d(32, 1, 1), tnn.Softplus())

  def forward(self, feats, grid, output_size=None):
    gh, gw = grid
    s = self.scratch
    levels = []
    for k, x in enumerate(feats):
      x = self.norm(x).permute(0, 2, 1).reshape(x.shape[0], -1, gh, gw)
      levels.append(self.resize_layers[k](self.projects[k](x)))
    l1, l2, l3, l4 = (getattr(s, f"layer{k + 1}_rn")(x) for k, x in enumerate(levels))
    p = s.refinenet4(l4, size=l3.shape[2:])
    p = s.refinenet3(p, l3, size=l2.shape[2:])
    p = s.refinenet2(p, l2, size=l1.shape[2:])
    p = s.refinenet1(p, l1)
    out = F.interpolate(s.output_conv1(p), output_size or (gh * 32, gw * 32),
                        mode="bilinear", align_corners=True)
    return s.output_conv2(out)[:, 0]


class TorchMLP(tnn.Module):
  def __init__(self, c, cfg):
    super().__init__()
    self.norm = tnn.LayerNorm(c, eps=cfg.norm_eps)
    self.mlp = tnn.Sequential(tnn.Linear(c, cfg.mlp_hidden), tnn.GELU(), tnn.Linear(cfg.mlp_hidden, 32 * 32))

  def forward(self, x, grid, output_size=None):
    (gh, gw), b = grid, x.shape[0]
    y = self.mlp(self.norm(x)).view(b, gh, gw, 32, 32).permute(0, 1, 3, 2, 4).reshape(b, gh * 32, gw * 32)
    if output_size is not None and tuple(output_size) != tuple(y.shape[1:]):
      y = F.interpolate(y[:, None], size=output_size, mode="bilinear", align_corners=True)[:, 0]
    return F.softplus(y)


def randomize(module, std=0.1, seed=0):
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.normal_(0.0, std)
  return module.eval()


def to_flax(state_dict):
  """Release state_dict -> Flax params: `a.0.b` -> `a_0/b`, weights transposed to [.., in, out]."""
  tree = {}
  for key, t in state_dict.items():
    path = []
    for part in key.split("."):
      if part.isdigit():
        path[-1] += f"_{part}"
      else:
        path.append(part)
    w = t.detach().numpy()
    leaf = path.pop()
    if leaf == "weight":
      if w.ndim == 4:
        w = w.transpose(2, 3, 0, 1) if key.startswith("resize_layers") else w.transpose(2, 3, 1, 0)
      leaf = {1: "scale", 2: "kernel", 4: "kernel"}[w.ndim]
      w = w.T if w.ndim == 2 else w
    node = tree
    for p in path:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(w)
  return {"params": tree}


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
      {"params": to_flax(tconv.state_dict())["params"]}, x)
  with torch.no_grad():
    ref = tconv(nchw(x)).permute(0, 2, 3, 1)
  assert max_diff(out, ref) < 1e-5


@pytest.mark.parametrize("stride", [8, 4, 2])
def test_patch_deconv_matches_conv_transpose(stride):
  tdeconv = randomize(tnn.ConvTranspose2d(5, 7, stride, stride))
  w = tdeconv.weight.detach().numpy().transpose(2, 3, 0, 1)
  params = {"params": {"kernel": w, "bias": tdeconv.bias.detach().numpy()}}
  x = rand(2, 3, 4, 5)
  out = dh.PatchDeconv(7, stride).apply(params, x)
  with torch.no_grad():
    ref = tdeconv(nchw(x)).permute(0, 2, 3, 1)
  assert out.shape == (2, 3 * stride, 4 * stride, 7)
  assert max_diff(out, ref) < 1e-5


@pytest.mark.parametrize("in_hw,out_hw", [
    ((3, 5), (6, 10)),     # x2 (the fusion blocks)
    ((4, 6), (13, 17)),    # upsample, non-integer ratio
    ((9, 12), (4, 5)),     # downsample
    ((6, 7), (1, 1)),      # single output pixel: torch samples index 0
    ((1, 5), (4, 3)),      # single input row
])
def test_resize_matches_torch_align_corners(in_hw, out_hw):
  x = rand(2, *in_hw, 3)
  out = dh.resize_bilinear_align_corners(jnp.asarray(x), out_hw)
  ref = F.interpolate(nchw(x), size=out_hw, mode="bilinear", align_corners=True).permute(0, 2, 3, 1)
  assert out.shape == (2, *out_hw, 3)
  assert max_diff(out, ref) < 1e-6


def test_layernorm_matches_torch():
  tln = randomize(tnn.LayerNorm(C, eps=1e-5))
  x = 3.0 * rand(2, 15, C) + 1.0
  out = layers.LayerNorm(eps=1e-5, axis_name="embed").apply(to_flax(tln.state_dict()), x)
  assert max_diff(out, tln(torch.from_numpy(x))) < 1e-5


def test_residual_unit_adds_relu_of_input():
  """The skip adds relu(x) (in-place ReLU), and the test can tell it from adding x."""
  trcu = randomize(TorchRCU(8))
  x = rand(1, 5, 6, 8)
  out = dh.ResidualConvUnit(8).apply(to_flax(trcu.state_dict()), x)
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
  return tmodel, to_flax(tmodel.state_dict()), feats


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
  params = to_flax(tmodel.state_dict())
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

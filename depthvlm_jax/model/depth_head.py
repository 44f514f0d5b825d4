"""DepthVLM's dense depth heads: the released DPT head and the per-token MLP ablation.

Both read LLM-width token features on a gh x gw grid (row-major, n = i*gw + j) and return
metric depth [B, gh*token_size, gw*token_size] (or `output_size`) in float32. Layout is NHWC throughout.

DPTHead parameter tree (names mirror the PyTorch release's state_dict):
  norm/{scale,bias}                          one LayerNorm shared by all four inputs
  projects_{0..3}/{kernel,bias}              1x1 conv, C -> out_channels[k]
  resize_layers_{0,1,2}/{kernel,bias}        transposed conv, kernel = stride = 8, 4, 2
  scratch/layer{1..4}_rn/kernel              3x3 conv, out_channels[k] -> features, no bias
  scratch/refinenet{1..4}/out_conv/{kernel,bias}
  scratch/refinenet{1..4}/resConfUnit2/conv{1,2}/{kernel,bias}
  scratch/refinenet{1..3}/resConfUnit1/conv{1,2}/{kernel,bias}
  scratch/output_conv1/{kernel,bias}         3x3, features -> features // 2
  scratch/output_conv2_0/{kernel,bias}       3x3, features // 2 -> 32
  scratch/output_conv2_2/{kernel,bias}       1x1, 32 -> 1
The last two run at the output size / cfg.output_stride (1 in the release), then resized to it.
All kernels are [kh, kw, in, out] (torch Conv2d [out, in, kh, kw] -> transpose(2, 3, 1, 0);
ConvTranspose2d [in, out, kh, kw] -> transpose(2, 3, 0, 1)).

MLPHead parameter tree: norm/{scale,bias}, mlp_0/{kernel,bias}, mlp_2/{kernel,bias}
(kernels [in, out]: torch Linear weight transposed).
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from depthvlm_jax.model import layers
from depthvlm_jax.model.config import QWEN3_VL_TOKEN_SIZE, DepthHeadConfig
from depthvlm_jax.model.resize import resize_bilinear_align_corners

_HIGHEST = jax.lax.Precision.HIGHEST
_CONV_AXES = (None, None, "conv_in", "conv_out")
# PyTorch's default Conv2d init (kaiming-uniform, a = sqrt(5): variance 1 / (3 fan_in)), which
# the release's head starts from. The transformer's normal(0.02) would shrink the signal by ~4x
# at each of the head's ~15 convolutions, and a head trained from scratch would barely learn.
CONV_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
# Kernel == stride transposed convs: each output pixel sees one input pixel, fan_in = in_channels.
DECONV_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", batch_axis=(0, 1))

HW = tuple[int, int]


def _conv(features: int, kernel: int, use_bias: bool, name: str, dtype: str, param_dtype: str):
  """Stride-1 conv with torch's symmetric padding (kernel // 2), i.e. 'same' for odd kernels."""
  pad = kernel // 2
  return nn.Conv(
      features, (kernel, kernel), padding=((pad, pad), (pad, pad)), use_bias=use_bias,
      dtype=layers.dtype_of(dtype), param_dtype=layers.dtype_of(param_dtype),
      kernel_init=layers.logical(CONV_INIT, _CONV_AXES),
      bias_init=layers.logical(nn.initializers.zeros_init(), _CONV_AXES[-1:]),
      precision=_HIGHEST, name=name)


class PatchDeconv(nn.Module):
  """ConvTranspose2d with kernel == stride: each input pixel paints its own s x s patch.

  Written as one einsum (no overlap, no padding) instead of a dilated convolution.
  """

  features: int
  stride: int
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    s = self.stride
    pdt = layers.dtype_of(self.param_dtype)
    kernel = self.param("kernel", layers.logical(DECONV_INIT, _CONV_AXES),
                        (s, s, x.shape[-1], self.features), pdt)
    bias = self.param("bias", layers.logical(nn.initializers.zeros_init(), _CONV_AXES[-1:]),
                      (self.features,), pdt)
    dt = layers.dtype_of(self.dtype)
    b, h, w, _ = x.shape
    y = jnp.einsum("bhwi,pqio->bhpwqo", x.astype(dt), kernel.astype(dt), precision=_HIGHEST)
    return y.reshape(b, h * s, w * s, self.features) + bias.astype(dt)


class ResidualConvUnit(nn.Module):
  """conv2(relu(conv1(relu(x)))) + relu(x).

  The skip adds relu(x), not x: the release's in-place ReLU overwrites x before the add.
  """

  features: int
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.relu(x)
    y = _conv(self.features, 3, True, "conv1", **kw)(x)
    y = _conv(self.features, 3, True, "conv2", **kw)(nn.relu(y))
    return y + x


class FusionBlock(nn.Module):
  """DPT feature fusion: (x + rcu1(skip)) -> rcu2 -> bilinear resize -> 1x1 out_conv."""

  features: int
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x, skip: Optional[jax.Array], size: Optional[HW]):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if skip is not None:
      x = x + ResidualConvUnit(self.features, name="resConfUnit1", **kw)(skip)
    x = ResidualConvUnit(self.features, name="resConfUnit2", **kw)(x)
    x = resize_bilinear_align_corners(x, size or (2 * x.shape[1], 2 * x.shape[2]))
    return _conv(self.features, 1, True, "out_conv", **kw)(x)


class DPTScratch(nn.Module):
  """The release's `scratch`: per-level 3x3 projections to `features`, fusion, output convs."""

  cfg: DepthHeadConfig
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, levels: Sequence[jax.Array], output_size: HW):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    f = self.cfg.features
    l1, l2, l3, l4 = (_conv(f, 3, False, f"layer{k + 1}_rn", **kw)(x) for k, x in enumerate(levels))
    p = FusionBlock(f, name="refinenet4", **kw)(l4, None, l3.shape[1:3])
    p = FusionBlock(f, name="refinenet3", **kw)(p, l3, l2.shape[1:3])
    p = FusionBlock(f, name="refinenet2", **kw)(p, l2, l1.shape[1:3])
    p = FusionBlock(f, name="refinenet1", **kw)(p, l1, None)
    y = _conv(f // 2, 3, True, "output_conv1", **kw)(p)
    y = resize_bilinear_align_corners(y, strided_size(output_size, self.cfg.output_stride))
    y = nn.relu(_conv(32, 3, True, "output_conv2_0", **kw)(y))
    y = resize_bilinear_align_corners(_conv(1, 1, True, "output_conv2_2", **kw)(y), output_size)
    return layers.DEPTH_ACTIVATIONS[self.cfg.activation](y)


def strided_size(size: HW, stride: int) -> HW:
  """Where the DPT head's last convolutions run: the output size / stride, rounded up."""
  return -(-size[0] // stride), -(-size[1] // stride)


def _tokens_to_grid(x: jax.Array, grid_hw: HW) -> jax.Array:
  """[B, gh*gw, C] (row-major tokens) -> [B, gh, gw, C]."""
  b, n, c = x.shape
  gh, gw = grid_hw
  if n != gh * gw:
    raise ValueError(f"got {n} tokens for a {gh}x{gw} grid")
  return x.reshape(b, gh, gw, c)


def _default_size(grid_hw: HW, output_size: Optional[HW], token_size: int) -> HW:
  return tuple(output_size) if output_size is not None else (grid_hw[0] * token_size, grid_hw[1] * token_size)


class DPTHead(nn.Module):
  """The released DPT head over [deepstack_0, deepstack_1, deepstack_2, llm_last].

  The four levels are brought to 8x, 4x, 2x and 1x the token grid, fused coarse-to-fine
  to 16x, then resized to the output size and mapped to positive depth (cfg.activation).
  """

  cfg: DepthHeadConfig
  dtype: str = "float32"
  param_dtype: str = "float32"
  token_size: int = QWEN3_VL_TOKEN_SIZE  # pixels per token: the output size when none is given

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], grid_hw: HW,
               output_size: Optional[HW] = None) -> jax.Array:
    if len(features) != 4:
      raise ValueError(f"DPTHead takes 4 features (3 DeepStack + last LLM state), got {len(features)}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    dt = layers.dtype_of(self.dtype)
    norm = layers.LayerNorm(eps=self.cfg.norm_eps, axis_name="embed", name="norm", **kw)
    levels = []
    for k, (x, ch) in enumerate(zip(features, self.cfg.out_channels)):
      x = _tokens_to_grid(norm(x.astype(dt)), grid_hw)
      x = _conv(ch, 1, True, f"projects_{k}", **kw)(x)
      if k < 3:
        x = PatchDeconv(ch, 8 >> k, name=f"resize_layers_{k}", **kw)(x)
      levels.append(x)
    depth = DPTScratch(self.cfg, name="scratch", **kw)(levels, _default_size(grid_hw, output_size, self.token_size))
    return depth[..., 0].astype(jnp.float32)


class MLPHead(nn.Module):
  """Per-token ablation head: each token's MLP paints its own token_size^2 pixel patch."""

  cfg: DepthHeadConfig
  dtype: str = "float32"
  param_dtype: str = "float32"
  token_size: int = QWEN3_VL_TOKEN_SIZE

  @nn.compact
  def __call__(self, features: jax.Array | Sequence[jax.Array], grid_hw: HW,
               output_size: Optional[HW] = None) -> jax.Array:
    """`features` is the last LLM state [B, N, C], or DPTHead's list (only its last is read)."""
    llm_last = features if hasattr(features, "shape") else features[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    t = self.token_size
    x = layers.LayerNorm(eps=self.cfg.norm_eps, axis_name="embed", name="norm", **kw)(
        llm_last.astype(layers.dtype_of(self.dtype)))
    x = layers.Dense(self.cfg.mlp_hidden, ("embed", "mlp"), name="mlp_0", **kw)(x)
    x = layers.Dense(t * t, ("mlp", None), name="mlp_2", **kw)(layers.gelu_exact(x))
    b, gh, gw, _ = _tokens_to_grid(x, grid_hw).shape
    # Within a token the first pixel axis is the row: [B, gh, gw, t, t] -> [B, gh, t, gw, t].
    x = x.reshape(b, gh, gw, t, t).transpose(0, 1, 3, 2, 4).reshape(b, gh * t, gw * t)
    size = tuple(output_size) if output_size is not None else (gh * t, gw * t)
    if size != (gh * t, gw * t):
      x = resize_bilinear_align_corners(x[..., None], size)[..., 0]
    return layers.DEPTH_ACTIVATIONS[self.cfg.activation](x).astype(jnp.float32)


def make_depth_head(cfg: DepthHeadConfig, dtype: str = "float32", param_dtype: str = "float32",
                    token_size: int = QWEN3_VL_TOKEN_SIZE):
  """DPTHead or MLPHead by `cfg.kind`; both are called as head(features, grid_hw, output_size)."""
  if cfg.kind == "dpt":
    return DPTHead(cfg, dtype=dtype, param_dtype=param_dtype, token_size=token_size)
  if cfg.kind == "mlp":
    return MLPHead(cfg, dtype=dtype, param_dtype=param_dtype, token_size=token_size)
  raise ValueError(f"unknown depth_head.kind={cfg.kind!r}; expected 'dpt' or 'mlp'")

"""PyTorch modules with the DepthVLM release's depth-head structure and state_dict keys.

They reproduce the release's quirks (the in-place ReLU of its residual conv units, so the skip
adds relu(x)); the tests compare the Flax heads against them on equal weights.
"""

import torch
import torch.nn.functional as F
from torch import nn as tnn


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

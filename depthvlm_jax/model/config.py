"""Model configuration: frozen dataclasses mirroring the Hugging Face Qwen3-VL config.

Field names follow `transformers`' `Qwen3VLConfig` so that conversion is a rename-free
copy; presets reproduce the published checkpoints' `config.json` values.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from depthvlm_jax.model.layers import ATTENTION_IMPLS, DEPTH_ACTIVATIONS, REMAT_POLICIES


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  depth: int = 24
  hidden_size: int = 1024
  intermediate_size: int = 4096
  num_heads: int = 16
  in_channels: int = 3
  patch_size: int = 16
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  out_hidden_size: int = 2560
  num_position_embeddings: int = 2304
  deepstack_visual_indexes: tuple[int, ...] = (5, 11, 17)
  rope_theta: float = 10000.0
  layer_norm_eps: float = 1e-6

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def token_size(self) -> int:
    """Input pixels covered by one LLM image token along each axis (32 for Qwen3-VL)."""
    return self.patch_size * self.spatial_merge_size


QWEN3_VL_TOKEN_SIZE = VisionConfig().token_size  # the default where no model config is at hand


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 151936
  hidden_size: int = 2560
  intermediate_size: int = 9728
  num_hidden_layers: int = 36
  num_attention_heads: int = 32
  num_key_value_heads: int = 8
  head_dim: int = 128
  rms_norm_eps: float = 1e-6
  rope_theta: float = 5_000_000.0
  mrope_section: tuple[int, int, int] = (24, 20, 20)
  max_position_embeddings: int = 262144
  attention_bias: bool = False


@dataclasses.dataclass(frozen=True)
class DepthHeadConfig:
  """DepthVLM's dense head. `kind` is "dpt" (the release) or "mlp" (the per-token ablation).
  `activation` maps the head's last output to metres: "softplus" (the release) or "exp" (the
  output is then log-depth, which SILog sees linearly: from scratch, a softplus head needs
  thousands of steps to reach street distances, exp needs tens). `output_stride` k > 1 runs the
  DPT head's last two convolutions at 1/k of the output size and resizes their one-channel result
  (before the activation) to it: 1 is the release; on CPU the backward pass of those full-size
  convolutions dominates a small model's step (the demo's: 0.35 s at stride 1, 0.19 s at 2)."""

  kind: str = "dpt"
  activation: str = "softplus"
  features: int = 256
  out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
  norm_eps: float = 1e-5
  mlp_hidden: int = 1024
  output_stride: int = 1
  loss_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  depth_head: Optional[DepthHeadConfig] = DepthHeadConfig()
  tie_word_embeddings: bool = True
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  # Numerics and memory: not part of the checkpoint, chosen per run.
  dtype: str = "float32"  # activation/compute dtype ("bfloat16" on accelerators)
  param_dtype: str = "float32"
  remat_policy: str = "none"  # none | full | dots | dots_no_batch (see model/layers.py)
  attention_impl: str = "xla"  # xla | jax | cudnn | splash (see model/layers.attention)

  def replace(self, **kwargs: Any) -> "ModelConfig":
    return dataclasses.replace(self, **kwargs)


def _validate(cfg: ModelConfig) -> ModelConfig:
  t, v = cfg.text, cfg.vision
  if t.num_attention_heads % t.num_key_value_heads:
    raise ValueError(
        f"text.num_attention_heads={t.num_attention_heads} is not a multiple of "
        f"text.num_key_value_heads={t.num_key_value_heads}")
  if sum(t.mrope_section) != t.head_dim // 2:
    raise ValueError(f"text.mrope_section={t.mrope_section} must sum to head_dim/2={t.head_dim // 2}")
  if v.out_hidden_size != t.hidden_size:
    raise ValueError(f"vision.out_hidden_size={v.out_hidden_size} must equal text.hidden_size={t.hidden_size}")
  if v.hidden_size % v.num_heads:
    raise ValueError(f"vision.hidden_size={v.hidden_size} is not a multiple of vision.num_heads={v.num_heads}")
  if sorted(v.deepstack_visual_indexes) != list(v.deepstack_visual_indexes) or (
      v.deepstack_visual_indexes and v.deepstack_visual_indexes[-1] >= v.depth):
    raise ValueError(f"vision.deepstack_visual_indexes={v.deepstack_visual_indexes} must be increasing and < depth")
  if len(v.deepstack_visual_indexes) > t.num_hidden_layers:
    raise ValueError("more DeepStack layers than decoder layers")
  if cfg.depth_head is not None and cfg.depth_head.kind == "dpt" and len(v.deepstack_visual_indexes) != 3:
    raise ValueError("the DPT depth head needs exactly 3 DeepStack features (+ the last LLM state)")
  if cfg.depth_head is not None and cfg.depth_head.activation not in DEPTH_ACTIVATIONS:
    raise ValueError(f"unknown depth_head.activation={cfg.depth_head.activation!r}; "
                     f"use one of {sorted(DEPTH_ACTIVATIONS)}")
  if cfg.depth_head is not None and (cfg.depth_head.output_stride < 1 or (
      cfg.depth_head.kind != "dpt" and cfg.depth_head.output_stride != 1)):
    raise ValueError(f"depth_head.output_stride={cfg.depth_head.output_stride} must be >= 1, "
                     "and 1 for the MLP head (it paints each token's pixels directly)")
  if cfg.remat_policy not in REMAT_POLICIES:
    raise ValueError(f"unknown remat_policy={cfg.remat_policy!r}; use one of {sorted(REMAT_POLICIES)}")
  if cfg.attention_impl not in ATTENTION_IMPLS:
    raise ValueError(f"unknown attention_impl={cfg.attention_impl!r}; use one of {ATTENTION_IMPLS}")
  return cfg


_VISION_SMALL = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                     deepstack_visual_indexes=(5, 11, 17))

PRESETS = {
    # Qwen3-VL-2B-Instruct (+ DepthVLM head)
    "2b": lambda: ModelConfig(
        vision=VisionConfig(**_VISION_SMALL, out_hidden_size=2048),
        text=TextConfig(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                        num_attention_heads=16, num_key_value_heads=8, head_dim=128),
        tie_word_embeddings=True),
    # Qwen3-VL-4B-Instruct: the base of the released DepthVLM-4B.
    "4b": lambda: ModelConfig(
        vision=VisionConfig(**_VISION_SMALL, out_hidden_size=2560),
        text=TextConfig(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                        num_attention_heads=32, num_key_value_heads=8, head_dim=128),
        tie_word_embeddings=True),
    # Qwen3-VL-8B-Instruct
    "8b": lambda: ModelConfig(
        vision=VisionConfig(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
                            out_hidden_size=4096, deepstack_visual_indexes=(8, 16, 24)),
        text=TextConfig(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                        num_attention_heads=32, num_key_value_heads=8, head_dim=128),
        tie_word_embeddings=False),
    # Tiny random model for tests and the CPU demo: every structural feature, few FLOPs.
    "tiny": lambda: ModelConfig(
        vision=VisionConfig(depth=4, hidden_size=32, intermediate_size=64, num_heads=4,
                            out_hidden_size=64, num_position_embeddings=64,
                            deepstack_visual_indexes=(0, 1, 2)),
        text=TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                        rope_theta=10000.0, mrope_section=(2, 3, 3), max_position_embeddings=4096),
        depth_head=DepthHeadConfig(features=16, out_channels=(8, 16, 32, 32), mlp_hidden=64),
        tie_word_embeddings=False,
        image_token_id=500, video_token_id=501, vision_start_token_id=498, vision_end_token_id=499),
    # Mid-size random model for CPU benchmarks against torch and FLOP checks: a real shape
    # (GQA, head_dim 64, the release's DPT widths) at a size a 2-core machine runs in seconds;
    # special ids as the tiny tokenizer has them, so the data pipeline feeds it.
    "mid": lambda: ModelConfig(
        vision=VisionConfig(depth=8, hidden_size=256, intermediate_size=1024, num_heads=4,
                            out_hidden_size=512, num_position_embeddings=576,
                            deepstack_visual_indexes=(1, 3, 5)),
        text=TextConfig(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                        num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                        rope_theta=10000.0, mrope_section=(12, 10, 10), max_position_embeddings=8192),
        tie_word_embeddings=False,
        image_token_id=500, video_token_id=501, vision_start_token_id=498, vision_end_token_id=499),
}


def get_config(name: str, **overrides: Any) -> ModelConfig:
  """A preset by name ("2b", "4b", "8b", "tiny", "mid"), with top-level field overrides."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
  return _validate(PRESETS[name]().replace(**overrides))


def validate(cfg: ModelConfig) -> ModelConfig:
  """Checks cross-field constraints; raises ValueError naming the offending field."""
  return _validate(cfg)

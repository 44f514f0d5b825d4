"""ModelConfig <-> Hugging Face `config.json` (Qwen3-VL, plus DepthVLM's `depth_head_*` fields).

Reads both the transformers-5 layout (`rope_parameters`) and the 4.x layout (`rope_theta` +
`rope_scaling`). The DPT widths are not in DepthVLM's config; on import they are read off the
tensors (`depth_head_from_tensors`), on export they are written as extra fields.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from depthvlm_jax.model.config import DepthHeadConfig, ModelConfig, TextConfig, VisionConfig, validate

ARCHITECTURE = "Qwen3VLForConditionalGeneration"


def _rope(text: Mapping[str, Any]) -> tuple[float, tuple[int, ...]]:
  rp = text.get("rope_parameters") or text.get("rope_scaling") or {}
  theta = rp.get("rope_theta", text.get("rope_theta", 5_000_000.0))
  section = tuple(rp.get("mrope_section", (24, 20, 20)))
  return float(theta), section


def from_hf(hf: Mapping[str, Any], depth_head: Optional[DepthHeadConfig] = None, **overrides: Any) -> ModelConfig:
  """HF config dict -> ModelConfig. `depth_head` (from the tensors) wins over config fields."""
  t, v = hf["text_config"], hf["vision_config"]
  theta, section = _rope(t)
  vrp = v.get("rope_parameters") or {}
  text = TextConfig(
      vocab_size=t["vocab_size"], hidden_size=t["hidden_size"], intermediate_size=t["intermediate_size"],
      num_hidden_layers=t["num_hidden_layers"], num_attention_heads=t["num_attention_heads"],
      num_key_value_heads=t.get("num_key_value_heads") or t["num_attention_heads"],
      head_dim=t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"],
      rms_norm_eps=t.get("rms_norm_eps", 1e-6), rope_theta=theta, mrope_section=section,
      max_position_embeddings=t.get("max_position_embeddings", 262144),
      attention_bias=t.get("attention_bias", False))
  vision = VisionConfig(
      depth=v["depth"], hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
      num_heads=v["num_heads"], in_channels=v.get("in_channels", 3), patch_size=v.get("patch_size", 16),
      temporal_patch_size=v.get("temporal_patch_size", 2), spatial_merge_size=v.get("spatial_merge_size", 2),
      out_hidden_size=v["out_hidden_size"], num_position_embeddings=v.get("num_position_embeddings", 2304),
      deepstack_visual_indexes=tuple(v.get("deepstack_visual_indexes", ())),
      rope_theta=float(vrp.get("rope_theta", 10000.0)))
  if depth_head is None and hf.get("depth_head_type"):
    depth_head = DepthHeadConfig(
        kind=hf["depth_head_type"], features=hf.get("depth_head_features", 256),
        out_channels=tuple(hf.get("depth_head_out_channels", (256, 512, 1024, 1024))),
        mlp_hidden=hf.get("depth_head_mlp_hidden", 1024), loss_weight=hf.get("depth_loss_weight", 1.0),
        activation=hf.get("depth_head_activation", "softplus"),
        output_stride=hf.get("depth_head_output_stride", 1))
  tie = hf.get("tie_word_embeddings", t.get("tie_word_embeddings", False))
  cfg = ModelConfig(
      vision=vision, text=text, depth_head=depth_head, tie_word_embeddings=bool(tie),
      image_token_id=hf.get("image_token_id", 151655), video_token_id=hf.get("video_token_id", 151656),
      vision_start_token_id=hf.get("vision_start_token_id", 151652),
      vision_end_token_id=hf.get("vision_end_token_id", 151653))
  return validate(cfg.replace(**overrides))


def depth_head_from_tensors(shapes: Mapping[str, tuple[int, ...]], hf: Mapping[str, Any]) -> Optional[DepthHeadConfig]:
  """The head's config as the checkpoint's tensors define it (None when there is no head)."""
  if not any(k.startswith("depth_head.") for k in shapes):
    return None
  common = dict(loss_weight=hf.get("depth_loss_weight", 1.0), activation=hf.get("depth_head_activation", "softplus"))
  if "depth_head.mlp.0.weight" in shapes:
    return DepthHeadConfig(kind="mlp", mlp_hidden=shapes["depth_head.mlp.0.weight"][0], **common)
  return DepthHeadConfig(
      kind="dpt", features=shapes["depth_head.scratch.layer1_rn.weight"][0],
      out_channels=tuple(shapes[f"depth_head.projects.{k}.weight"][0] for k in range(4)),
      output_stride=hf.get("depth_head_output_stride", 1), **common)


def to_hf(cfg: ModelConfig, torch_dtype: str = "float32") -> dict[str, Any]:
  t, v = cfg.text, cfg.vision
  out: dict[str, Any] = {
      "architectures": [ARCHITECTURE],
      "model_type": "qwen3_vl",
      "image_token_id": cfg.image_token_id,
      "video_token_id": cfg.video_token_id,
      "vision_start_token_id": cfg.vision_start_token_id,
      "vision_end_token_id": cfg.vision_end_token_id,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "dtype": torch_dtype,
      "text_config": {
          "model_type": "qwen3_vl_text", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
          "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
          "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
          "head_dim": t.head_dim, "hidden_act": "silu", "rms_norm_eps": t.rms_norm_eps,
          "max_position_embeddings": t.max_position_embeddings, "attention_bias": t.attention_bias,
          "tie_word_embeddings": cfg.tie_word_embeddings, "dtype": torch_dtype,
          "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta,
                              "mrope_section": list(t.mrope_section), "mrope_interleaved": True},
      },
      "vision_config": {
          "model_type": "qwen3_vl_vision", "depth": v.depth, "hidden_size": v.hidden_size,
          "intermediate_size": v.intermediate_size, "num_heads": v.num_heads, "in_channels": v.in_channels,
          "patch_size": v.patch_size, "temporal_patch_size": v.temporal_patch_size,
          "spatial_merge_size": v.spatial_merge_size, "out_hidden_size": v.out_hidden_size,
          "num_position_embeddings": v.num_position_embeddings, "hidden_act": "gelu_pytorch_tanh",
          "deepstack_visual_indexes": list(v.deepstack_visual_indexes), "dtype": torch_dtype,
          "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
      },
  }
  if cfg.depth_head is not None:
    h = cfg.depth_head
    out.update(depth_head_type=h.kind, depth_head_activation=h.activation, depth_loss_weight=h.loss_weight)
    if h.kind == "mlp":
      out.update(depth_head_mlp_hidden=h.mlp_hidden, depth_head_feature_mode="llm_last")
    else:
      out.update(depth_head_features=h.features, depth_head_out_channels=list(h.out_channels),
                 depth_head_output_stride=h.output_stride)
  return out

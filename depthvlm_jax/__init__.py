"""depthvlm_jax: vision-language models that read metric depth (DepthVLM, DepthLM) in JAX."""

from depthvlm_jax.convert.pretrained import abstract_params, init_params, save_pretrained
from depthvlm_jax.loading import load_pretrained
from depthvlm_jax.infer.generate import GenerateOutput, generate
from depthvlm_jax.infer.predictor import Prediction, Predictor
from depthvlm_jax.model.config import DepthHeadConfig, ModelConfig, TextConfig, VisionConfig, get_config
from depthvlm_jax.model.text import KVCache
from depthvlm_jax.model.vlm import DepthVLM, VLMOutput

__all__ = [
    "DepthHeadConfig", "DepthVLM", "GenerateOutput", "KVCache", "ModelConfig", "Prediction", "Predictor", "TextConfig",
    "VLMOutput",
    "VisionConfig", "abstract_params", "generate", "get_config", "init_params", "load_pretrained",
    "save_pretrained",
]

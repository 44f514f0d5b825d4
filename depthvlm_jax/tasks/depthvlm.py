"""DepthVLM: a dense metric depth map from the DPT head, and the fixed text reply.

Training pairs the fixed prompt with the fixed reply (REFERENCE: no other instruction data);
the loss is SILog on the depth map (dense, or the labelled pixels of sparse-only records) plus
the answer's cross-entropy; evaluation scores the prefill's depth map densely.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from depthvlm_jax import sharding
from depthvlm_jax.data import text, transforms
from depthvlm_jax.data.pipeline import TaskExample
from depthvlm_jax.eval import metrics
from depthvlm_jax.tasks.text_terms import TEXT_TERMS, text_terms
from depthvlm_jax.train import losses
from depthvlm_jax.train.step import pixels_on_device


@dataclasses.dataclass(frozen=True)
class DepthVLMTask:
  name: str = "depthvlm"
  prompt: str = text.DEPTHVLM_PROMPT
  reply: str = text.DEPTHVLM_REPLY
  # Training augmentation (not in the release): mirror images and appearance jitter, which
  # change no depth value; they keep a small model from learning one renderer's look.
  flip: bool = False
  photometric: float = 0.0
  needs_depth_head = True
  loss_names = ("depth",) + TEXT_TERMS

  def augment(self, example: transforms.Example, rng: np.random.Generator) -> transforms.Example:
    if self.flip and rng.random() < 0.5:
      example = transforms.flip_horizontal(example)
    if self.photometric:
      example = dataclasses.replace(example, rgb=transforms.photometric(example.rgb, rng, self.photometric))
    return example

  def example(self, example, depth, depth_valid, rng) -> TaskExample:
    return TaskExample(example.rgb, self.prompt, self.reply, np.zeros(3, np.float32))

  def texts(self):
    return [(self.prompt, self.reply)]

  def loss_terms(self, out, batch, names) -> dict:
    terms = text_terms(out, batch, names)
    if "depth" in names:
      terms["depth"] = losses.depth_loss(out.depth, batch)[0]
    return terms

  def evaluator(self, model, tok, image_hw):
    """(params, batch) -> (per-image dense metrics, {"depth": [B, H, W]}) from one prefill."""
    del tok, image_hw
    fwd = jax.jit(lambda p, ids, images, mask: model.apply({"params": p}, ids, pixels_on_device(images), mask).depth)

    def evaluate(params, batch):
      depth = sharding.to_host(fwd(params, batch["input_ids"], batch["image"], batch["attention_mask"]))
      host = {k: sharding.to_host(batch[k]) for k in ("depth", "depth_valid", "weight")}
      valid = host["depth_valid"] & (host["weight"][:, None, None] > 0)
      return metrics.dense(depth, host["depth"], valid), {"depth": depth}

    return evaluate

  @staticmethod
  def targets(batch: dict) -> np.ndarray:
    """The labelled depths of a host batch (for the training-median baseline)."""
    return batch["depth"][batch["depth_valid"] & (batch["weight"][:, None, None] > 0)]

  @staticmethod
  def constant_metrics(value: float, batch: dict) -> dict[str, np.ndarray]:
    """What predicting `value` metres everywhere scores (the baseline a model must beat)."""
    valid = batch["depth_valid"] & (batch["weight"][:, None, None] > 0)
    return metrics.dense(np.full_like(batch["depth"], value), batch["depth"], valid)

"""The loss terms every task's text answer gives: cross-entropy on the answer and the z-loss."""

from __future__ import annotations

from depthvlm_jax.train import losses

TEXT_TERMS = ("ce", "z_loss")


def text_terms(out, batch, names) -> dict:
  """{"ce": ..., "z_loss": ...} restricted to `names` (nothing computed when neither is asked)."""
  if not set(names) & set(TEXT_TERMS):
    return {}
  ce, z, _ = losses.cross_entropy(out.logits, batch["labels"], batch["weight"])
  return {k: v for k, v in (("ce", ce), ("z_loss", z)) if k in names}

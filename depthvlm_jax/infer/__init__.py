"""Inference: KV-cache text generation (the prefill also returns the depth map)."""

"""Pure Flax Linen modules: config, layers, rope, vision, text, depth_head, vlm."""

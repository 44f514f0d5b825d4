"""Training: losses, the training loop and its reporting."""

"""Training: loop, metrics, checkpoints."""

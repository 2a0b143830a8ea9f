"""Rewards as pure functions of (model or judge, prompts, images/tokens) -> tensors. Knows nothing of the trainer."""

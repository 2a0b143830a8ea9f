"""The unified multimodal model: tokenizers, AR backbone, diffusion head, generation, scoring, pretraining.
Knows nothing of RL."""

"""GRPO's group-normalised advantage, as GvU's code computes it, with zero-variance groups made explicit.

A = (r - mean_G(r)) / (std_G(r) + eps), eps = 1e-4 in GvU (OpenRLHF's group_norm uses 1e-9). A group whose rewards
are all equal carries no signal: its advantages are exactly 0 (not 0/eps noise) and it is reported, so a run where
most groups collapse is visible in the logs. std is the unbiased one (torch.std), as in GvU and OpenRLHF.
"""

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, zero_tol: float = 1e-6):
    """rewards [num_prompts, group] -> (advantages of the same shape, bool mask of samples in zero-variance groups)."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [num_prompts, group >= 2], got {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf")
    std = rewards.std(-1, keepdim=True)
    flat = (std <= zero_tol).expand_as(rewards)
    adv = (rewards - rewards.mean(-1, keepdim=True)) / (std + eps)
    return adv.masked_fill(flat, 0.0), flat

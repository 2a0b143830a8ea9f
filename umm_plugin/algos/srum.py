"""SRUM's training objectives as pure tensor functions: the reward-weighted flow-matching loss (the authors'
offline fine-tune), its token-level analogue for an AR image generator, and dense group advantages (our online
variant).

Authors: L = mean[M↓ · ‖v̂ − (ε − x)‖²] + λ · mean‖v̂ − (ε − x_ref)‖², λ = 0.5, with x the model's own image and
M↓ the reward map at the latent resolution. x_ref is the reference model's image for the same prompt; offline, the
images are generated once by the model before training, so x_ref = x unless a caller passes another image.
In the X-Omni layout the layout of a picture is decided by the AR image tokens and the diffusion head only renders
them, so the same map, pooled to the token grid, also weights the tokens' negative log-likelihood (same form, same
λ). Online, the pooled map is a per-token reward and each token's advantage is normalised within its group.
"""

import torch
import torch.nn.functional as F


def srum_flow_loss(v, noise, x, weight, lam: float = 0.5, x_ref=None) -> torch.Tensor:
    """v: the head's velocity at x_t = (1 − σ) x + σ ε, all [B, C, H, W]; weight [B, 1, H, W] (the map M↓)."""
    x_ref = x if x_ref is None else x_ref
    weighted = (weight * (v - (noise - x)) ** 2).mean()
    return weighted + lam * ((v - (noise - x_ref)) ** 2).mean() if lam else weighted


def srum_token_loss(logp, mask, weight, lam: float = 0.5) -> torch.Tensor:
    """The map-weighted NLL of image tokens: logp, mask, weight [B, L] (weight = the map pooled to the token grid)."""
    n = mask.sum().clamp(min=1)
    nll = -logp * mask
    return (weight * nll).sum() / n + lam * nll.sum() / n


def pool_to_grid(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, H, W] pixel maps -> [B, grid * grid] cell means in the visual tokenizer's row-major code order."""
    return F.adaptive_avg_pool2d(maps[:, None], grid).flatten(1)


def dense_group_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor | None = None,
    per: str = "position",
    eps: float = 1e-4,
    picture: float = 0.0,
) -> torch.Tensor:
    """rewards [P, G, L] (one per token), mask [P, G, L] (1 on the tokens that count) -> advantages, 0 off the mask.

    per="position": each cell against the same cell in the group's other samples, (r − mean_G) / (std_G + eps),
    so a token is credited for what its image has *at that place*; cells equal across the group get exactly 0.
    per="sample": against all cells of all the group's samples; a background cell then scores against object
    cells and the signal mostly says "be like the average cell", which is why it is not the default.
    std is the unbiased one over the counted cells, as in `group_advantages`.
    picture > 0 adds picture x each sample's GRPO advantage of its mean counted reward to all its counted tokens: a
    choice that costs the whole picture (an extra object lowers the background everywhere) is then credited on every
    token that made it, not only on the cells where the pictures differ.
    """
    if rewards.dim() != 3 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [num_prompts, group >= 2, tokens], got {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf")
    if per not in ("position", "sample"):
        raise ValueError(f"per must be 'position' or 'sample', got {per!r}")
    m = torch.ones_like(rewards) if mask is None else mask.to(rewards.dtype)
    dims = (1,) if per == "position" else (1, 2)
    n = m.sum(dims, keepdim=True)
    mean = (rewards * m).sum(dims, keepdim=True) / n.clamp(min=1)
    std = (((rewards - mean) ** 2 * m).sum(dims, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
    adv = ((rewards - mean) / (std + eps) * m).masked_fill((std <= 1e-6) | (n < 2), 0.0)
    if picture:
        means = (rewards * m).sum(-1) / m.sum(-1).clamp(min=1)  # [P, G]
        spread = means.std(1, keepdim=True)
        z = ((means - means.mean(1, keepdim=True)) / (spread + eps)).masked_fill(spread <= 1e-6, 0.0)
        adv = adv + picture * z[..., None] * m
    return adv

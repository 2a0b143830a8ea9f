"""R3's tree RL: the two stages' advantages and the buffer of stage-1 states that stage 2 starts from.

Advantages are group-centred without the std division (unlike `grpo.group_advantages`), as in the authors' code:
stage 1 A_text = R - mean_G(R), A_img = V - mean_G(V); stage 2 the same with V_new, and A_img is zeroed for members
that answered "no further edit needed" (no refine step ran, so there is no image action to credit). `std=True` (ours,
`--r3.std_norm`) divides each by its group's std + 1e-4 as GRPO does: a 0/1 V that holds for one member in ten has
std .3, so without the division the policy moves ~3x slower per step than GRPO's.

`segment_advantages` puts them on an OpenRLHF trajectory's tokens: the first action segment is the text turn (plan
or reflection), the later ones the image turn; a member that stopped has no image segment, so its A_img vanishes.

`TreeBuffer` draws stage-2 roots: the perfect pool (V == 1) with probability p_perfect = 0.15, else the rest,
uniform inside the pool (faithful). `weighting="spread"` is our variant, off by default: imperfect states are drawn
in proportion to their stage-1 group's V spread (max - min), and each draw carries the importance weight
(1/n_pool) / q_i that turns a weighted stage-2 loss back into the uniform objective (over the states whose group's
V varied; zero-spread states are never drawn).
"""

from collections import deque

import numpy as np
import torch
import torch.nn.functional as F

from umm_plugin.algos.grpo import group_advantages


def stage1_advantages(rewards: torch.Tensor, v: torch.Tensor, std: bool = False):
    """rewards, v [P, G] -> (A_text = R - mean_G(R), A_img = V - mean_G(V)); no std division unless `std`."""
    for name, x in (("rewards", rewards), ("v", v)):
        if x.dim() != 2 or x.shape[1] < 2 or x.shape != rewards.shape:
            raise ValueError(f"{name} must be [num_prompts, group >= 2] like rewards, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contain NaN or inf")
    if std:
        return group_advantages(rewards)[0], group_advantages(v)[0]
    return rewards - rewards.mean(-1, keepdim=True), v - v.mean(-1, keepdim=True)


def stage2_advantages(rewards: torch.Tensor, v_new: torch.Tensor, stopped: torch.Tensor, std: bool = False):
    """rewards, v_new, stopped (bool) [P, G] -> (A_text, A_img), A_img zeroed where stopped.

    The group mean runs over all G members, stopped ones included: the caller sets their V_new to V_prev (the
    image was kept), so "stopping" is scored against the group like any other choice.
    """
    if stopped.shape != rewards.shape or stopped.dtype != torch.bool:
        raise ValueError(
            f"stopped must be a bool tensor shaped like rewards, got {stopped.dtype} {tuple(stopped.shape)}"
        )
    a_text, a_img = stage1_advantages(rewards, v_new, std)
    return a_text, a_img.masked_fill(stopped, 0.0)


def segment_advantages(
    token_rewards: torch.Tensor, action_mask: torch.Tensor, v: torch.Tensor, std: bool = False
) -> torch.Tensor:
    """token_rewards, action_mask [P, G, A] and v [P, G] -> per-token advantages [P, G, A].

    Action segments are runs of action tokens. The first carries the text reward R on its tokens and gets
    A_text = R - mean_G(R); every later one gets A_img = V - mean_G(V), V the member's judge score (for a member
    that stopped, V_prev: it still counts in the group mean, as `stage2_advantages` says). Zero off the actions.
    """
    mask = action_mask > 0
    segment = (mask & ~F.pad(mask, (1, 0))[..., :-1]).cumsum(-1) * mask
    text = segment == 1
    r = (token_rewards * text).sum(-1) / text.sum(-1).clamp(min=1)
    a_text, a_img = stage1_advantages(r, v.to(r.dtype), std)
    return torch.where(text, a_text[..., None], torch.where(segment >= 2, a_img[..., None], 0.0))


class TreeBuffer:
    """Stage-1 results (prompt, V, image tokens, any state) that stage-2 trajectories restart from.

    Entries are dicts {**state, "prompt", "v", "spread"} (the buffer's keys win over the state's). The pools are
    "perfect" (V == 1 exactly) and "imperfect" (the rest). `draw` picks the perfect pool with probability
    p_perfect; if the picked pool is empty it falls back to the other one (so an all-imperfect buffer early in
    training still yields states, and p_perfect is a target, not a guarantee). The oldest entry is evicted once
    max_size is reached, whichever pool it is in, so the roots track the current policy.
    """

    def __init__(self, max_size: int = 4096, p_perfect: float = 0.15, weighting: str = "uniform"):
        if max_size < 1:
            raise ValueError(f"max_size={max_size} must be positive")
        if not 0 <= p_perfect <= 1:
            raise ValueError(f"p_perfect={p_perfect} must be a probability")
        if weighting not in ("uniform", "spread"):
            raise ValueError(f"weighting={weighting!r}: use uniform or spread")
        self.entries = deque(maxlen=max_size)
        self.p_perfect, self.weighting = p_perfect, weighting

    def __len__(self) -> int:
        return len(self.entries)

    def add_group(self, prompt: str, v, states=None) -> None:
        """Store one stage-1 group: its G judge scores v [G] in [0, 1] and G state dicts (e.g. image tokens)."""
        v = torch.as_tensor(v, dtype=torch.float64).flatten()
        if v.numel() == 0 or not ((v >= 0) & (v <= 1)).all():  # NaN fails both comparisons
            raise ValueError(f"v must be non-empty and lie in [0, 1] (no NaN), got {v.tolist()}")
        states = [{} for _ in v] if states is None else list(states)
        if len(states) != len(v):
            raise ValueError(f"states must hold one dict per v, got {len(states)} for {len(v)}")
        spread = float(v.max() - v.min())
        for vi, state in zip(v.tolist(), states):
            self.entries.append({**state, "prompt": prompt, "v": vi, "spread": spread})

    def draw(self, rng: np.random.Generator) -> dict:
        """A copy of one entry plus "importance" (1.0 unless weighting="spread" drew it from the imperfect pool)."""
        if not self.entries:
            raise IndexError("draw from an empty TreeBuffer")
        perfect = [e for e in self.entries if e["v"] == 1]
        imperfect = [e for e in self.entries if e["v"] != 1]
        pool = perfect if rng.random() < self.p_perfect else imperfect
        pool = pool or perfect or imperfect
        spread = np.array([e["spread"] for e in pool])
        if self.weighting == "spread" and pool is imperfect and spread.sum() > 0:
            # Zero-spread groups get q = 0 and are never drawn, so every weight stays finite; E_q[w L] is then the
            # uniform average with those states' terms left out (a group whose V never varied taught nothing).
            q = spread / spread.sum()
            i = int(rng.choice(len(pool), p=q))
            return {**pool[i], "importance": 1.0 / (len(pool) * q[i])}
        return {**pool[int(rng.integers(len(pool)))], "importance": 1.0}

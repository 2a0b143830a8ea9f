"""Image-token generation and teacher-forced scoring on the AR backbone (any `transformers` causal LM).

`generate_image_tokens` is the rollout hot path: one prefill of the left-padded prompts, then one cached step per
image token; classifier-free guidance runs the unconditional prompts as extra rows of the same batch (one forward
per step, not two), and logits are sliced to the image vocabulary before sampling. `continuation_logprobs` scores
target tokens after a prefix in one forward pass, computing the LM head only at target positions (at real vocab
sizes the full [B, T, V] logits are most of the memory).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - len(r) :] = torch.tensor(r)
        mask[i, n - len(r) :] = 1
    return ids, mask


@dataclass(frozen=True)
class SamplingConfig:
    """How image tokens are drawn: the one set of sampling defaults for rollouts, evaluation and `umm-plugin generate`.

    Parameters:
        temperature: softmax temperature (0 = greedy); in an RL run OpenRLHF's `--rollout.temperature`.
        top_k: keep the k most likely codes (0 = all).
        min_p: keep the codes whose probability is at least min_p x the most likely one's (0 = all).
        cfg_scale: classifier-free guidance, logits = uncond + cfg_scale (cond - uncond) (1 = off); evaluation and
            `generate` only, RL rollouts sample without it.
    """

    temperature: float = field(
        default=1.0,
        metadata={
            "help": "Softmax temperature of image tokens (0 = greedy).",
            "flag": "OpenRLHF's `--rollout.temperature` sets it",
        },
    )
    top_k: int = field(default=0, metadata={"help": "Image-token top-k (0 = off)."})
    min_p: float = field(
        default=0.0,
        metadata={
            "help": "Image-token min-p (0 = off; the GvU authors use 0.03, under which the ShapesWorld weak base "
            "draws almost nothing)."
        },
    )
    cfg_scale: float = field(
        default=1.0,
        metadata={
            "help": "Classifier-free guidance scale (1 = off).",
            "flag": "`umm-plugin eval` and `generate` only; RL rollouts sample without CFG",
        },
    )

    def __post_init__(self):
        for name in ("temperature", "top_k", "cfg_scale"):
            if not getattr(self, name) >= 0:  # NaN fails too
                raise ValueError(f"sampling {name} {getattr(self, name)} must be >= 0")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"sampling min_p {self.min_p} must lie in [0, 1]")


def sample_logits(logits, temperature=1.0, top_k=0, min_p=0.0, generator=None) -> torch.Tensor:
    """[B, V] -> [B] indices. temperature 0 is greedy; top_k and min_p filter before sampling. `generator` may be a
    list, one per row: then what a row draws does not depend on the other rows of its batch."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(top_k, -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if min_p:
        probs = probs.masked_fill(probs < min_p * probs.max(-1, keepdim=True).values, 0)
    if isinstance(generator, list):
        return torch.cat([torch.multinomial(p[None], 1, generator=g)[:, 0] for p, g in zip(probs, generator)])
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_image_tokens(
    backbone,
    layout,
    prompt_ids: list[list[int]],
    uncond_ids: list[list[int]] | None = None,
    *,
    sampling: SamplingConfig = SamplingConfig(),
    generator: torch.Generator | None = None,
    pad_id: int = 0,
) -> torch.Tensor:
    """Sample layout.grid**2 image codes after each prompt (ids ending in <IMAGE>). Returns [B, grid**2] codes.

    The model reads the image as `layout.tokens(codes)`: each row's codes and an <EOL>, which is fed, not sampled."""
    cfg_scale = sampling.cfg_scale
    cfg = uncond_ids is not None and cfg_scale != 1.0
    rows = prompt_ids + (uncond_ids if cfg else [])
    ids, mask = left_pad(rows, pad_id)
    ids, mask = ids.to(backbone.device), mask.to(backbone.device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    lo, hi = layout.image_offset, layout.image_offset + layout.num_codes
    cache = DynamicCache(config=backbone.config)
    out = backbone(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, logits_to_keep=1)
    codes = []
    for step in range(layout.length - 1):  # the last token, an <EOL>, is never fed
        if (step + 1) % (layout.grid + 1) == 0:
            token = torch.full((len(mask), 1), layout.eol, device=mask.device)
        else:
            logits = out.logits[:, -1, lo:hi].float()
            if cfg:
                cond, uncond = logits.chunk(2)
                logits = uncond + cfg_scale * (cond - uncond)
            code = sample_logits(logits, sampling.temperature, sampling.top_k, sampling.min_p, generator)
            codes.append(code)
            if len(codes) == layout.grid**2:
                break
            token = (code + lo).repeat(2 if cfg else 1)[:, None]
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], 1)
        pos = pos[:, -1:] + 1
        out = backbone(input_ids=token, attention_mask=mask, position_ids=pos, past_key_values=out.past_key_values)
    return torch.stack(codes, 1).cpu()


def continuation_logprobs(backbone, prefixes: list[list[int]], targets: list[list[int]], pad_id: int = 0):
    """log p(target_j | prefix, target_<j) for every target token, one teacher-forced forward pass.

    Returns (logp [B, Lmax], mask [B, Lmax]); rows are right-padded. Gradients flow when called under grad.
    """
    seqs = [p + t for p, t in zip(prefixes, targets, strict=True)]
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], attn[i, : len(s)] = torch.tensor(s), 1
    width = max(len(t) for t in targets)
    # Position p predicts token p + 1: gather the hidden states just before each target token.
    where = torch.zeros((len(seqs), width), dtype=torch.long)
    tmask = torch.zeros((len(seqs), width), dtype=torch.bool)
    tgt = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, (p, t) in enumerate(zip(prefixes, targets)):
        where[i, : len(t)] = torch.arange(len(p) - 1, len(p) - 1 + len(t))
        tmask[i, : len(t)] = True
        tgt[i, : len(t)] = torch.tensor(t)
    dev = backbone.device
    hidden = backbone.get_decoder()(input_ids=ids.to(dev), attention_mask=attn.to(dev)).last_hidden_state
    hidden = hidden.gather(1, where.to(dev)[..., None].expand(-1, -1, hidden.shape[-1]))
    logp = F.log_softmax(backbone.get_output_embeddings()(hidden).float(), -1)
    logp = logp.gather(-1, tgt.to(dev)[..., None]).squeeze(-1)
    return logp * tmask.to(dev), tmask.to(dev)


@torch.no_grad()
def generate_text(
    backbone,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    stop_ids,
    vocab_size: int | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    pad_id: int = 0,
    allowed: Sequence[int] | None = None,
) -> list[list[int]]:
    """Text continuation of each prompt with a KV cache, until a token in `stop_ids` (kept as the last token, as vLLM
    keeps its stop and EOS tokens) or `max_new_tokens`. `vocab_size` keeps sampling to ids below it (the text
    vocabulary: image codes follow it in the X-Omni layout); `allowed` to those ids (vLLM's allowed_token_ids)."""
    if allowed is not None and vocab_size is not None:
        raise ValueError("give vocab_size or allowed, not both")
    stop = {int(s) for s in ([stop_ids] if isinstance(stop_ids, int) else stop_ids)}
    allowed = None if allowed is None else torch.tensor(list(allowed), dtype=torch.long)
    ids, mask = left_pad(prompt_ids, pad_id)
    ids, mask = ids.to(backbone.device), mask.to(backbone.device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=backbone.config)
    out = backbone(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, logits_to_keep=1)
    rows: list[list[int]] = [[] for _ in prompt_ids]
    done = [False] * len(prompt_ids)
    for step in range(max_new_tokens):
        if allowed is None:
            token = sample_logits(out.logits[:, -1, :vocab_size].float(), temperature, generator=generator).cpu()
        else:
            token = allowed[sample_logits(out.logits[:, -1, allowed].float(), temperature, generator=generator).cpu()]
        for i, t in enumerate(token.tolist()):
            if not done[i]:
                rows[i].append(t)
                done[i] = t in stop
        if all(done) or step + 1 == max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], 1)
        pos = pos[:, -1:] + 1
        out = backbone(
            input_ids=token[:, None].to(mask.device),
            attention_mask=mask,
            position_ids=pos,
            past_key_values=out.past_key_values,
        )
    return rows

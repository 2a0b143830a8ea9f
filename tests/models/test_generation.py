import pytest
import torch

from umm_plugin.models.generation import SamplingConfig, continuation_logprobs, generate_image_tokens, left_pad
from umm_plugin.rewards.gvu import gvu_reward

PROMPTS = ["a photo of a red circle", "a photo of two blue squares to the left of a triangle", "a photo of a square"]


def no_cache_reference(model, prompts, cfg_scale=1.0):
    """Greedy image tokens by re-running the whole sequence every step (no KV cache, CFG as a separate batch)."""
    lay = model.layout
    cond = [model.generation_prompt(p) for p in prompts]
    uncond = [model.generation_prompt("") for _ in prompts]

    def last_logits(rows):
        ids, mask = left_pad(rows, model.tokenizer.pad_token_id)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model.backbone(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        return logits[:, lay.image_offset : lay.image_offset + lay.num_codes]

    seqs = [[] for _ in prompts]  # image tokens so far, <EOL>s included
    while len(seqs[0]) < lay.length - 1:
        if len(seqs[0]) % (lay.grid + 1) == lay.grid:  # a full row: its <EOL> is given, not sampled
            for s in seqs:
                s.append(lay.eol)
            continue
        logits = last_logits([c + s for c, s in zip(cond, seqs)])
        if cfg_scale != 1.0:
            u = last_logits([c + s for c, s in zip(uncond, seqs)])
            logits = u + cfg_scale * (logits - u)
        for s, t in zip(seqs, logits.argmax(-1).tolist()):
            s.append(lay.image_offset + t)
    return torch.stack([lay.codes(s + [lay.eol]) for s in seqs])


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_kv_cache_generation_equals_no_cache_reference_at_temperature_zero(tiny_umm, cfg_scale):
    m = tiny_umm
    with torch.no_grad():
        want = no_cache_reference(m, PROMPTS, cfg_scale)
    got = generate_image_tokens(
        m.backbone,
        m.layout,
        [m.generation_prompt(p) for p in PROMPTS],
        [m.generation_prompt("")] * 3,
        sampling=SamplingConfig(temperature=0, cfg_scale=cfg_scale),
        pad_id=m.tokenizer.pad_token_id,
    )
    assert got.shape == (3, 64)
    assert torch.equal(got, want)
    # rows of different prompt lengths were left-padded together; each row alone gives the same tokens
    alone = generate_image_tokens(
        m.backbone,
        m.layout,
        [m.generation_prompt(PROMPTS[1])],
        [m.generation_prompt("")],
        sampling=SamplingConfig(0, cfg_scale=cfg_scale),
    )
    assert torch.equal(alone[0], got[1])


def test_sampling_is_seeded_and_filters_apply(tiny_umm):
    m = tiny_umm
    rows = [m.generation_prompt(p) for p in PROMPTS]
    a = generate_image_tokens(m.backbone, m.layout, rows, generator=torch.Generator().manual_seed(1))
    b = generate_image_tokens(m.backbone, m.layout, rows, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert 0 <= a.min() and a.max() < m.layout.num_codes
    top1 = generate_image_tokens(
        m.backbone, m.layout, rows, sampling=SamplingConfig(top_k=1), generator=torch.Generator().manual_seed(2)
    )
    greedy = generate_image_tokens(m.backbone, m.layout, rows, sampling=SamplingConfig(temperature=0))
    assert torch.equal(top1, greedy)
    # min_p = 1 keeps only the most likely token too
    assert torch.equal(generate_image_tokens(m.backbone, m.layout, rows, sampling=SamplingConfig(min_p=1.0)), greedy)


def test_one_pass_scores_equal_a_per_token_loop(tiny_umm):
    m = tiny_umm
    codes = generate_image_tokens(
        m.backbone, m.layout, [m.generation_prompt(p) for p in PROMPTS], sampling=SamplingConfig(0)
    )
    prefixes = [m.chat(c, "describe the image .") for c in codes]
    targets = [m.ids(p) + [m.tokenizer.eos_token_id] for p in PROMPTS]
    with torch.no_grad():
        logp, mask = continuation_logprobs(m.backbone, prefixes, targets)
        for i, (pre, tgt) in enumerate(zip(prefixes, targets)):
            assert mask[i].sum() == len(tgt)
            for j, tok in enumerate(tgt):
                ref = torch.log_softmax(m.backbone(torch.tensor([pre + tgt[:j]])).logits[0, -1], -1)[tok]
                assert abs(ref.item() - logp[i, j].item()) < 1e-5
        r = gvu_reward(m, codes, PROMPTS, include_eos=True)
        want = torch.stack([logp[i, : mask[i].sum()].mean().exp() for i in range(3)])
        assert torch.allclose(r, want, atol=1e-6)
    assert ((0 < r) & (r <= 1)).all()


def test_scores_carry_gradients_for_training(tiny_umm):
    m = tiny_umm
    logp, _ = continuation_logprobs(m.backbone, [m.chat("generate : a photo of a circle")], [m.ids("a photo")])
    logp.sum().backward()
    grad = m.backbone.get_input_embeddings().weight.grad
    assert grad is not None and grad.abs().sum() > 0
    m.backbone.zero_grad(set_to_none=True)

"""GvU reward cost: one teacher-forced pass (ours) vs the authors' per-token loop, and vs one plain forward.

For L = 8, 32, 128 prompt tokens after an image context, on the same random-init Qwen2 and the same token ids:
- loop / ours: the authors' code scores token j with its own forward pass over sys + image + T_<j (no KV cache);
- ours / plain: our pass runs the decoder once and the LM head only at the L target positions; "plain" is one
  ordinary forward of the same tokens (LM head at every position). Goal: <= 1.1.
Both ratios come from one run on the same inputs; best of `--repeat` timings each.

    python bench/reward.py [--size shapes|qwen2.5-0.5b] [--batch 8] [--context 70] [--repeat 3]
"""

import argparse
from functools import partial

import torch
from rollout import best_time  # bench/ is on sys.path when run as a script
from transformers import Qwen2Config, Qwen2ForCausalLM

from umm_plugin.models.generation import continuation_logprobs

SIZES = {
    # the ShapesWorld model's shape (vocab 54 words + 385 codes)
    "shapes": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=439),
    # Qwen2.5-0.5B's config (random init): the backbone size of small real UMMs
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936),
}  # fmt: skip


def per_token_loop(model, full, context):
    """The authors' way: one forward per target token, each over the whole prefix so far (no KV cache)."""
    out = torch.empty(full.shape[0], full.shape[1] - context)
    for j in range(out.shape[1]):
        logits = model(full[:, : context + j]).logits[:, -1].float()
        out[:, j] = torch.log_softmax(logits, -1).gather(-1, full[:, context + j, None])[:, 0]
    return out


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=SIZES, default="shapes")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=70, help="sys + image + instruction tokens before the prompt")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = Qwen2Config(**SIZES[a.size], max_position_embeddings=1024, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg).eval()
    print(f"{a.size}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, batch {a.batch}, "
          f"context {a.context}, {torch.get_num_threads()} threads")  # fmt: skip
    print("| L | ours ms | per-token loop ms | loop / ours | plain forward ms | ours / plain |")
    print("|---|---|---|---|---|---|")
    for L in (8, 32, 128):
        g = torch.Generator().manual_seed(L)
        prefixes = torch.randint(1, cfg.vocab_size, (a.batch, a.context), generator=g).tolist()
        targets = torch.randint(1, cfg.vocab_size, (a.batch, L), generator=g).tolist()
        full = torch.tensor([p + t for p, t in zip(prefixes, targets)])

        ours = partial(continuation_logprobs, model, prefixes, targets)
        loop = partial(per_token_loop, model, full, a.context)
        plain = partial(model, full)
        assert torch.allclose(ours()[0], loop(), atol=1e-4)
        t_ours, t_loop, t_plain = (best_time(f, a.repeat) for f in (ours, loop, plain))
        print(f"| {L} | {1e3 * t_ours:.1f} | {1e3 * t_loop:.1f} | {t_loop / t_ours:.1f} | {1e3 * t_plain:.1f} | "
              f"{t_ours / t_plain:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()

"""Image-token rollout throughput: our KV-cache generator vs Hugging Face `generate` on the same model and batch.

Both sample grid*grid image codes per prompt with logits restricted to the image vocabulary, each row ended by a
given <EOL> (ours feeds it; HF forces it with a logits processor, the way a vLLM one would). CFG on: ours runs the
unconditional prompts as extra rows of the same batch; HF runs its UnbatchedClassifierFreeGuidanceLogitsProcessor
(a second model call per step). Prints tokens/s and the ratio ours/HF, measured in one run (best of --repeats).

    python bench/rollout.py [--model DIR] [--batch 32] [--repeats 3]

`--model janus`: the Janus sampler (`JanusUMM.sample_image_tokens`, CFG rows in the batch, KV cache) vs
`transformers`' own `JanusForConditionalGeneration.generate(generation_mode="image")` (which doubles the batch for
CFG the same way), CFG 5, on the tiny Janus and on a random-init model of Janus-Pro-1B's shapes with `--grid` x
`--grid` image tokens (1.9 B parameters, 7.5 GB in fp32; the default 8 keeps a CPU run near two minutes, 24 is the
real 384 px image). transformers 5.15's image generation needs an explicit DynamicCache, passed here.

    python bench/rollout.py --model janus [--sizes tiny 1b] [--grid 8] [--batch 2] [--repeats 1]
"""

import argparse
import time
from collections import Counter

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from umm_plugin.models.generation import SamplingConfig, generate_image_tokens, left_pad
from umm_plugin.models.umm import UMM
from umm_plugin.models.visual_tokenizer import PatchVQ
from umm_plugin.worlds.grammar import WORDS, make_prompts, sample_scene
from umm_plugin.worlds.scene import render


class ImageRows(LogitsProcessor):
    """Codes only, except at each row end, where only <EOL> may follow."""

    def __init__(self, layout, prompt_len):
        self.lay, self.start = layout, prompt_len

    def __call__(self, input_ids, scores):
        lay, out = self.lay, torch.full_like(scores, float("-inf"))
        if (input_ids.shape[1] - self.start + 1) % (lay.grid + 1) == 0:
            out[:, lay.eol] = 0
        else:
            out[:, lay.image_offset : lay.image_offset + lay.num_codes] = scores[
                :, lay.image_offset : lay.image_offset + lay.num_codes
            ]
        return out


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def janus_row(size: str, args) -> str:
    """One line of the Janus table: our sampler vs transformers' generate on a random-init Janus of `size`."""
    from transformers import DynamicCache

    from umm_plugin.models.janus import random_janus

    model = random_janus(size, seed=0, grid=args.grid)
    prompts = ["a photo of a red stop sign and a dog"] * args.batch  # one length: no padding in HF's batch
    sampling = SamplingConfig(cfg_scale=5.0)

    def ours():
        model.sample_image_tokens(prompts, sampling, torch.Generator().manual_seed(0))

    def hf():
        ids = torch.tensor([model.generation_prompt(p) for p in prompts])
        with torch.no_grad():
            model.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_mode="image",
                do_sample=True,
                guidance_scale=5.0,
                past_key_values=DynamicCache(config=model.model.config.text_config),
            )

    n_tok = len(prompts) * model.image_tokens
    repeats = args.repeats if size == "1b" else max(args.repeats, 5)  # the tiny model's times are noisy
    t_ours, t_hf = zip(*[(best_time(ours, 1), best_time(hf, 1)) for _ in range(repeats)])  # interleaved
    t_ours, t_hf = min(t_ours), min(t_hf)
    n = sum(p.numel() for p in model.model.parameters()) / 1e9
    row = f"{size:<8}{n:>7.2f}B{len(prompts):>7}{model.image_tokens:>8}"
    return f"{row}{n_tok / t_ours:>12.1f}{n_tok / t_hf:>10.1f}{t_hf / t_ours:>9.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="model directory, or janus; default: a random-init model of the ShapesWorld size")
    ap.add_argument("--batch", type=int, default=None, help="prompts per batch (default 32; janus: 2)")
    ap.add_argument("--repeats", type=int, default=None, help="best of N runs (default 3; janus: 1, tiny at least 5)")
    ap.add_argument("--sizes", nargs="+", choices=("tiny", "1b"), default=["tiny", "1b"], help="janus only")
    ap.add_argument("--grid", type=int, default=8, help="janus 1b: image tokens per side")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.model == "janus":
        args.batch, args.repeats = args.batch or 2, args.repeats or 1
        print(f"{'model':<8}{'params':>8}{'batch':>7}{'tokens':>8}{'ours tok/s':>12}{'HF tok/s':>10}{'ours/HF':>9}")
        for size in args.sizes:
            print(janus_row(size, args), flush=True)
        return
    args.batch, args.repeats = args.batch or 32, args.repeats or 3
    if args.model:
        model = UMM.from_pretrained(args.model)
    else:
        rng = np.random.default_rng(0)
        vq = PatchVQ.fit(np.stack([render(sample_scene(m, rng)) for m in make_prompts(500, "train", 0)]))
        model = UMM.build(WORDS, vq, hidden=128, layers=4)
    lay, bb = model.layout, model.backbone
    # same-length prompts, so HF's CFG processor (which ignores left padding in its own branch) is exact
    pool = [m["prompt"] for m in make_prompts(2000, "train", 0)]
    common = Counter(len(p.split()) for p in pool).most_common(1)[0][0]
    prompts = [p for p in pool if len(p.split()) == common][: args.batch]
    rows = [model.generation_prompt(p) for p in prompts]
    uncond = [model.generation_prompt("")] * len(rows)
    ids, mask = left_pad(rows, model.tokenizer.pad_token_id)
    uids, umask = left_pad(uncond, model.tokenizer.pad_token_id)
    n_tok = len(rows) * lay.length
    mask_proc = LogitsProcessorList([ImageRows(lay, ids.shape[1])])

    print(
        f"batch {len(rows)} x {lay.length} image tokens (rows ended by <EOL>), backbone "
        f"{sum(p.numel() for p in bb.parameters()) / 1e6:.2f}M params, {torch.get_num_threads()} threads"
    )
    print(f"{'cfg':<6}{'ours tok/s':>12}{'HF tok/s':>12}{'ours/HF':>9}")
    for cfg in (1.0, 3.0):

        def ours(cfg=cfg):
            generate_image_tokens(
                bb,
                lay,
                rows,
                uncond,
                sampling=SamplingConfig(cfg_scale=cfg),
                generator=torch.Generator().manual_seed(0),
            )

        def hf(cfg=cfg):
            kw = {"negative_prompt_ids": uids, "negative_prompt_attention_mask": umask} if cfg != 1.0 else {}
            with torch.no_grad():
                bb.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=lay.length - 1,  # ours stops after the last code too
                    min_new_tokens=lay.length - 1,
                    do_sample=True,
                    top_k=0,
                    logits_processor=mask_proc,
                    guidance_scale=cfg,
                    pad_token_id=model.tokenizer.pad_token_id,
                    **kw,
                )

        t_ours, t_hf = best_time(ours, args.repeats), best_time(hf, args.repeats)
        print(f"{'on' if cfg != 1 else 'off':<6}{n_tok / t_ours:>12.0f}{n_tok / t_hf:>12.0f}{t_hf / t_ours:>9.2f}")


if __name__ == "__main__":
    main()

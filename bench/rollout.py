"""Image-token rollout throughput: our KV-cache generator vs Hugging Face `generate` on the same model and batch.

Both sample grid*grid image codes per prompt with logits restricted to the image vocabulary, each row ended by a
given <EOL> (ours feeds it; HF forces it with a logits processor, the way a vLLM one would). CFG on: ours runs the
unconditional prompts as extra rows of the same batch; HF runs its UnbatchedClassifierFreeGuidanceLogitsProcessor
(a second model call per step). Prints tokens/s and the ratio ours/HF, measured in one run (best of --repeats).

    python bench/rollout.py [--model DIR] [--batch 32] [--repeats 3]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="model directory; default: a random-init model of the ShapesWorld size")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
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

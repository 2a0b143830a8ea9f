"""Peak memory of the GvU rollout engine: policy alone vs policy + judge=reference vs a naive second-copy judge.

Each variant runs in a fresh process (peak RSS is per process) on the same UMM with a real-size backbone (Qwen2.5-
0.5B's layer shapes, random init, our 439-token vocabulary) and LoRA r 8 on every linear layer:
- policy: the engine generates image tokens for a batch and scores them with the policy (judge=policy);
- reference: the same, scoring with judge=reference (the same weights with the adapter disabled);
- naive: the same, scoring with a deep copy of the base backbone as the judge (what a second model costs).
Goal: reference / policy <= 1.05.

    python bench/memory.py [--batch 8] [--layers 24]
"""

import argparse
import asyncio
import copy
import json
import resource
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import numpy as np


def build(path, layers):
    from umm_plugin.models.umm import UMM
    from umm_plugin.models.visual_tokenizer import PatchVQ
    from umm_plugin.worlds.grammar import WORDS, make_prompts, sample_scene
    from umm_plugin.worlds.scene import render

    rng = np.random.default_rng(0)
    vq = PatchVQ.fit(np.stack([render(sample_scene(m, rng)) for m in make_prompts(300, "train", 0)]))
    UMM.build(WORDS, vq, hidden=896, layers=layers, heads=14, seed=0).save_pretrained(path)


def run(path, variant, batch):
    import torch
    from openrlhf.utils.sampling_params import SamplingParams

    from umm_plugin.models.umm import DESCRIBE
    from umm_plugin.openrlhf.engine import UMMRolloutEngine, _lora_config

    lora = SimpleNamespace(rank=8, alpha=32, target_modules="all-linear", dropout=0.0)
    engine = UMMRolloutEngine(path, 0, None, lora=_lora_config(SimpleNamespace(ds=SimpleNamespace(lora=lora))))
    umm, lay = engine.umm, engine.umm.layout
    judge = copy.deepcopy(engine.umm.backbone.get_base_model()) if variant == "naive" else None
    prompt = "a photo of two red circles"
    image = SamplingParams(
        max_tokens=lay.length,
        allowed_token_ids=lay.code_ids + [lay.eol],
    )

    async def step():
        outs = await asyncio.gather(*[engine.generate(umm.generation_prompt(prompt), image) for _ in range(batch)])
        seqs = [umm.chat(lay.codes(o.outputs[0].token_ids), DESCRIBE) + umm.ids(prompt) for o in outs]
        if variant == "naive":
            with torch.no_grad():
                judge(torch.tensor(seqs))
        else:
            score = SamplingParams(max_tokens=1, prompt_logprobs=0)
            use = variant == "policy"
            await asyncio.gather(*[engine.generate(s, score, use_adapter=use) for s in seqs])

    for _ in range(2):
        asyncio.run(step())
    print(json.dumps({"variant": variant, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--run", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.run:
        return run(a.run[0], a.run[1], a.batch)
    with tempfile.TemporaryDirectory() as tmp:
        build(tmp, a.layers)
        peak = {}
        for variant in ("policy", "reference", "naive"):
            out = subprocess.run(
                [sys.executable, __file__, "--batch", str(a.batch), "--run", tmp, variant],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            peak[variant] = json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]
    print(f"Qwen2.5-0.5B-shaped backbone ({a.layers} layers, hidden 896), LoRA r 8, batch {a.batch}")
    print("| variant | peak RSS MB | / policy |")
    print("|---|---|---|")
    for v, mb in peak.items():
        print(f"| {v} | {mb:.0f} | {mb / peak['policy']:.3f} |")


if __name__ == "__main__":
    main()

"""GvU Fig. 8's sensitivity test for SRUM's global score, over pretraining seeds: does the self-judge score images
made for a prompt with its colour / count / position words removed lower than images made for the full prompt?

For each seed it pretrains the judge base (hidden 64, 2 layers, 6000 steps, 60 % of each batch yes/no questions
asked in pairs: `--judge-pairs 1`; about 5-6 min a seed on 2 CPU cores) or loads it from `--bases DIR/seed<S>`, then
for 120 train prompts per category prints the mean global score on full-prompt images, on ablated ones, their
difference (the drop) and the share of ablated images that score lower among those that really break the prompt (a
random layout keeps a relation 27.5 % of the time). The last rows give the median and range over seeds. This is a
claim about a trained base, whose value depends on the seed and the CPU's floating-point order, so it lives here
and not in the test suite.

    python bench/judge_fig8.py [--seeds 0 1 2] [--bases runs/judge-bases] [--steps 6000]
"""

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from umm_plugin.models.pretrain import PretrainConfig, pretrain
from umm_plugin.models.umm import UMM
from umm_plugin.rewards.srum import QUESTION, caption_scores, yes_no_scores
from umm_plugin.worlds.evaluator import check
from umm_plugin.worlds.grammar import Group, Structure, make_prompts, parse_prompt, sample_scene
from umm_plugin.worlds.scene import render

ABLATED_TAGS = {
    "color": ("colors", "color_attr", "color_count"),
    "count": ("counting", "color_count", "multi_count", "position_count"),
    "position": ("position", "position_count", "position_size"),
}
CASES = [("prob", yes_no_scores, w) for w in ABLATED_TAGS] + [
    ("caption", caption_scores, w) for w in ("color", "count")
]


def ablate(meta: dict, what: str) -> dict:
    """The prompt with its colour / count / position words removed (counts become one, relations 'and')."""
    s = parse_prompt(meta["prompt"])
    if what == "color":
        groups = tuple(Group(g.count, g.shape, None, g.size) for g in s.groups)
    elif what == "count":
        groups = tuple(Group(1, g.shape, g.color, g.size) for g in s.groups)
    else:
        groups = s.groups
    return Structure(groups, None if what == "position" else s.relation).meta()


def judge_base(out: Path, seed: int, steps: int) -> UMM:
    if not (out / "umm_config.json").is_file():
        cfg = PretrainConfig(
            out=str(out), seed=seed, steps=steps, batch_size=32, hidden=64, layers=2, head_steps=1,
            tokenizer_scenes=500, judge_share=0.6, judge_pairs=1.0, r3_share=0.05, own_samples_from=1.0, lr=3e-3,
        )  # fmt: skip
        pretrain(cfg, log=lambda *_: None)
    return UMM.from_pretrained(out)


@torch.no_grad()
def sensitivity(model: UMM, scorer, what: str) -> tuple[float, float]:
    """(mean drop in g, share of prompt-breaking ablated images that score lower) over 120 train prompts."""
    rng = np.random.default_rng(0)
    metas = make_prompts(120, "train", 5, tags=ABLATED_TAGS[what])
    full = [sample_scene(x, rng) for x in metas]
    ablated = [sample_scene(ablate(x, what), rng) for x in metas]
    broken = torch.tensor([not check(x, objects)[0] for x, objects in zip(metas, ablated)])
    questions = [QUESTION.format(prompt=x["prompt"]) for x in metas]
    g_full = scorer(model, model.vq.encode(np.stack([render(o) for o in full])), questions)
    g_ablated = scorer(model, model.vq.encode(np.stack([render(o) for o in ablated])), questions)
    return float(g_full.mean() - g_ablated.mean()), float((g_ablated < g_full)[broken].float().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--bases", default="runs/judge-bases", help="Where the judge bases are kept (seed<S>/).")
    ap.add_argument("--steps", type=int, default=6000)
    args = ap.parse_args()
    table = {}
    for seed in args.seeds:
        model = judge_base(Path(args.bases) / f"seed{seed}", seed, args.steps)
        for name, scorer, what in CASES:
            table[(name, what, seed)] = sensitivity(model, scorer, what)
            drop, share = table[(name, what, seed)]
            print(f"seed {seed} {name:<8}{what:<9} drop {drop:+.3f}  share lower {share:.2f}", flush=True)
    print(f"\n{'scorer':<9}{'words':<9}{'drop median [min, max]':>26}{'share median [min, max]':>27}")
    for name, _, what in CASES:
        drops, shares = zip(*(table[(name, what, s)] for s in args.seeds))
        print(
            f"{name:<9}{what:<9}{statistics.median(drops):>+10.3f} [{min(drops):+.3f}, {max(drops):+.3f}]"
            f"{statistics.median(shares):>11.2f} [{min(shares):.2f}, {max(shares):.2f}]"
        )


if __name__ == "__main__":
    main()

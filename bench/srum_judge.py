"""What SRUM's global score sees on the model's own pictures, and where a policy puts the two objects of a relation.

1. For train prompts of each category, the model draws at T 1 and the global question is scored both ways (`prob`:
   p(yes) − p(no) to "is this <prompt> ?", `caption`: 2 p(prompt | image, describe)^(1/L) − 1); printed: the share
   right and with an extra object (evaluator), and each scorer's ROC AUC against "right" and against "no extra".
2. For position prompts of both splits: the share right, with both objects drawn exactly once, and with the
   relation right given that. The held-out layouts are mirrors of trained ones (docs/results.md, "Why is held-out
   position the hard one?"), so a policy that learns the pair's arrangement instead of the relation word rises on
   train and falls on held-out.
3. Whether the model reads the relation word at all: the share of images drawn token for token the same when a
   position prompt's relation is swapped for its mirror ("left of" <-> "right of", "above" <-> "below") under the
   same sampling noise (the weak base: .86).

    python bench/srum_judge.py --model runs/shapes-weak [--n 200] [--position-n 400] [--mirror-n 40]
"""

import argparse
import collections

import numpy as np
import torch

from umm_plugin.eval import generate_images, roc_auc
from umm_plugin.models.umm import UMM
from umm_plugin.rewards.srum import QUESTION, SCORERS
from umm_plugin.worlds.evaluator import detect, evaluate
from umm_plugin.worlds.grammar import MIRROR, Structure, make_prompts, prompt_pool

TAGS = ("two_object", "position", "color_attr", "counting")


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=200, help="train prompts per category for the global score (0 = skip)")
    ap.add_argument("--position-n", type=int, default=400, help="position prompts per split (0 = skip)")
    ap.add_argument("--mirror-n", type=int, default=40, help="images per prompt of a mirrored pair (0 = skip)")
    args = ap.parse_args()
    model = UMM.from_pretrained(args.model)
    for tag in TAGS if args.n else ():
        metas = make_prompts(args.n, "train", 5, tags=(tag,))
        prompts = [m["prompt"] for m in metas]
        codes, images = generate_images(model, prompts, seed=3)
        right = np.array([evaluate(img, m)[0] for img, m in zip(images, metas)])
        asked = np.array([sum(r["count"] for r in m["include"]) for m in metas])
        clean = np.array([len(detect(img).objects) for img in images]) <= asked
        line = f"{tag:<12} right {right.mean():.3f} extra {1 - clean.mean():.3f}"
        for name in ("prob", "caption"):
            g = SCORERS[name](model, codes, [QUESTION.format(prompt=p) for p in prompts]).numpy()
            line += f" | {name} AUC right {roc_auc(g, right):.3f} no extra {roc_auc(g, clean):.3f}"
        print(line, flush=True)
    for split in ("train", "eval") if args.position_n else ():
        metas = make_prompts(args.position_n, split, 7, tags=("position",))
        _, images = generate_images(model, [m["prompt"] for m in metas], seed=4)
        n = collections.Counter()
        for img, m in zip(images, metas):
            ok, why = evaluate(img, m)
            shapes = collections.Counter(o.shape for o in detect(img).objects)
            both = all(shapes[r["class"]] == 1 for r in m["include"])
            n["right"] += ok
            n["both"] += both
            n["relation"] += both and not any(" target" in w for w in why)
        print(
            f"position {split:<5} right {n['right'] / len(metas):.3f} both once {n['both'] / len(metas):.3f} "
            f"relation right given both {n['relation'] / max(n['both'], 1):.3f}",
            flush=True,
        )
    same = []
    for s in (prompt_pool("position", "train") + prompt_pool("position", "eval")) if args.mirror_n else ():
        if s.relation in ("left of", "above"):  # each prompt pair once: the other says "right of" / "below"
            a, _ = generate_images(model, [s.text()] * args.mirror_n, seed=4)
            b, _ = generate_images(model, [Structure(s.groups, MIRROR[s.relation]).text()] * args.mirror_n, seed=4)
            same.append((a == b).flatten(1).all(1).float().mean().item())
    if same:
        print(f"relation word mirrored, same noise: identical images {np.mean(same):.3f} ({len(same)} prompt pairs)")


if __name__ == "__main__":
    main()

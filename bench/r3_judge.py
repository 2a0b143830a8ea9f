"""How well does R3's `self` judge sort the model's own first images into stage 2's perfect and imperfect pools?

For prompts of a split the model plans and draws its first image as at inference (greedy plan, image at T 1, the
`umm-plugin eval --rounds` protocol); the self judge then gives V = 1 or 0 as the recipe's executor does (greedy
caption checked against the prompt's checklist, the relation by p(yes) > p(no) to "is this <prompt> ?"), and the
evaluator says whether the image is right. Printed: how often V = 1, P(right | V = 1) (the perfect pool's purity:
its wrong images are the ones whose stop stage 2 rewards), P(V = 1 | right) and P(V = 1 | wrong); for the greedy
caption (`--r3.caption greedy`) and for the one made to name colours (`colours`, the default: `colour_slot`).

    python bench/r3_judge.py --model runs/shapes-weak-r3p [--n 400] [--split train]
"""

import argparse

import numpy as np
import torch

from umm_plugin.eval import captions, r3_rounds
from umm_plugin.models.generation import generate_text
from umm_plugin.models.umm import ASK, DESCRIBE, UMM
from umm_plugin.rewards.r3 import caption_objects, checklist_score, colour_slot
from umm_plugin.worlds.evaluator import evaluate
from umm_plugin.worlds.grammar import make_prompts
from umm_plugin.worlds.scene import COLOR_NAMES


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=400, help="prompts (seed 0)")
    ap.add_argument("--split", default="train", choices=("train", "eval"), help="stage-2 roots come from train")
    args = ap.parse_args()
    model, metas = UMM.from_pretrained(args.model), make_prompts(args.n, args.split, 0)
    images = [r["images"][0] for r in r3_rounds(model, metas, rounds=0, keep=len(metas))["record"]]
    right = np.array([evaluate(img, meta)[0] for img, meta in zip(images, metas)])
    codes = model.vq.encode(np.stack(images))  # the judge sees the image re-tokenized, as in RL
    yes, no = model.ids("yes")[0], model.ids("no")[0]
    eos, colours = model.tokenizer.eos_token_id, model.ids(" ".join(COLOR_NAMES))
    v = {"greedy": [], "colours": []}
    for c, caption, meta in zip(codes, captions(model, codes), metas):
        relation = None
        if any("position" in r for r in meta["include"]):
            logits = model.backbone(torch.tensor([model.chat(c, ASK.format(prompt=meta["prompt"]))])).logits[0, -1]
            relation = bool(logits[yes] > logits[no])
        objects, said = caption_objects(caption, meta)
        v["greedy"].append(checklist_score(said, objects, relation) == 1)
        words = caption.split()
        k = colour_slot(words)
        if k is not None:  # as the executor's self_judge: the best colour word, then greedy on
            said = model.ids(" ".join(words[:k]))
            said += generate_text(model.backbone, [model.chat(c, DESCRIBE) + said], 1, [], allowed=colours)[0]
            rest = generate_text(model.backbone, [model.chat(c, DESCRIBE) + said], 40, eos, model.layout.image_offset)
            words = model.tokenizer.convert_ids_to_tokens(said + [t for t in rest[0] if t != eos])
        objects, said = caption_objects(" ".join(words), meta)
        v["colours"].append(checklist_score(said, objects, relation) == 1)
    print(f"{args.model}, {args.n} {args.split} prompts: right {right.mean():.3f}")
    for name, judged in v.items():
        judged = np.array(judged)
        print(
            f"  {name:8s} V = 1 {judged.mean():.3f}  P(right | V = 1) {right[judged].mean():.3f}  "
            f"P(V = 1 | right) {judged[right].mean():.3f}  P(V = 1 | wrong) {judged[~right].mean():.3f}"
        )


if __name__ == "__main__":
    main()

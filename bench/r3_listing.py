"""Does R3's reflection act on what it sees? Its verdict against its own think block, on its own first images.

For held-out prompts the model plans and draws its first image as at inference (greedy plan, image at T 1, the
`umm-plugin eval --rounds` protocol), then reflects greedily: `<think> a listing of the image </think>` followed by
"no further edit needed" or an edit. Printed, each against the evaluator's verdict on the image:
- verdict: the model stops (says "no further edit needed");
- listing: the objects its own think block names pass the prompt's checklist (as the `self` judge checks a caption:
  colours only if the listing names any, no sizes; the relation item is left out, a listing does not say where);
- and how often the two agree. A verdict far below its listing means the model sees the mistake but does not act
  on it.

    python bench/r3_listing.py --model runs/shapes-weak-r3 [--n 400]
"""

import argparse

import numpy as np
import torch

from umm_plugin.models.generation import generate_image_tokens, generate_text
from umm_plugin.models.umm import UMM
from umm_plugin.rewards.r3 import THINK, caption_objects, checklist, is_no_edit
from umm_plugin.worlds.evaluator import check, evaluate
from umm_plugin.worlds.grammar import make_prompts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=400, help="held-out prompts (seed 0, as umm-plugin eval)")
    args = ap.parse_args()
    m = UMM.from_pretrained(args.model)
    tok, lay = m.tokenizer, m.layout
    eos, pad = tok.eos_token_id, tok.pad_token_id
    metas = make_prompts(args.n, "eval", 0)
    with torch.no_grad():
        ctx = [m.reason_prompt(x["prompt"]) for x in metas]
        stop_plan = tok.convert_tokens_to_ids(["</think>", "<SOM>"])
        plans = generate_text(m.backbone, ctx, 48, stop_plan, lay.image_offset, pad_id=pad)
        rows = [c + p + m.after_plan(p) for c, p in zip(ctx, plans)]
        gen = torch.Generator().manual_seed(0)
        codes = generate_image_tokens(m.backbone, lay, rows, None, 1.0, 1.0, 0, 0.0, gen, pad)
        right = np.array([evaluate(img, x)[0] for img, x in zip(m.vq.decode(codes), metas)])
        reflect = [m.reflect_prompt(c, x["prompt"]) for c, x in zip(codes, metas)]
        answers = generate_text(m.backbone, reflect, 48, eos, lay.image_offset, pad_id=pad)
    stop, listing = [], []
    for answer, meta in zip(answers, metas):
        text = " ".join(tok.convert_ids_to_tokens([t for t in answer if t != eos]))
        stop.append(is_no_edit(text))
        think = THINK.fullmatch(text)
        objects, said = caption_objects(think["plan"] if think else "", meta)
        listing.append(all(check(it, objects)[0] for it in checklist(said) if not it.get("relation")))
    stop, listing = np.array(stop), np.array(listing)

    def split(says):  # accuracy against the evaluator, then the rate of "right" on right and on wrong images
        rates = f"on right images {says[right].mean():.3f}, wrong {says[~right].mean():.3f}"
        return f"{(says == right).mean():.3f} ({rates})"

    print(f"{args.model}: {right.mean():.3f} of {len(metas)} first images right")
    print(f"  verdict 'no further edit' accuracy {split(stop)}")
    print(f"  own listing passes the prompt      {split(listing)}")
    print(f"  verdict agrees with own listing {(stop == listing).mean():.3f}")


if __name__ == "__main__":
    main()

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

from umm_plugin.eval import r3_rounds
from umm_plugin.models.umm import UMM
from umm_plugin.rewards.r3 import THINK, caption_objects, checklist, is_no_edit
from umm_plugin.worlds.evaluator import check, evaluate
from umm_plugin.worlds.grammar import make_prompts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=400, help="held-out prompts (seed 0, as umm-plugin eval)")
    args = ap.parse_args()
    metas = make_prompts(args.n, "eval", 0)
    # One round of R3 at inference, every prompt kept: its first image and its first reflection's text.
    record = r3_rounds(UMM.from_pretrained(args.model), metas, rounds=1, keep=len(metas))["record"]
    right = np.array([evaluate(r["images"][0], meta)[0] for r, meta in zip(record, metas)])
    stop, listing = [], []
    for r, meta in zip(record, metas):
        text = r["texts"][1]
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

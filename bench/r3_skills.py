"""R3's two inference skills on the pretraining distribution, before any RL: can the base refine, and does it stop?

For prompts of a split, a ground-truth scene is broken the way pretraining breaks it (`edit_pair`: an extra, dropped,
recoloured or reshaped object; pairs whose break leaves the prompt true are skipped). Then:
- refine: given the broken image, the truthful reflection and the right edit (exactly pretraining's refine row), the
  model samples the edited image (T 1); `right` = the evaluator accepts it, `copied` = the codes equal the shown ones;
- reflect: the model's own greedy reflection on the same broken images; `stops` = it says "no further edit needed"
  (wrong every time: every image shown is broken).
Stage-2 RL can only reinforce an edit that sometimes works; these numbers say whether the base gives it one.

    python bench/r3_skills.py --model runs/shapes-weak [--split train|eval] [--n 400] [--seed 1]
"""

import argparse

import numpy as np
import torch

from umm_plugin.models.generation import SamplingConfig, generate_image_tokens, generate_text
from umm_plugin.models.pretrain import NO_EDIT, Batcher, PretrainConfig, edit_pair
from umm_plugin.models.umm import UMM
from umm_plugin.rewards.r3 import is_no_edit
from umm_plugin.worlds.evaluator import evaluate
from umm_plugin.worlds.grammar import make_prompts, sample_scene


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", default="train", choices=("train", "eval"))
    ap.add_argument("--n", type=int, default=400, help="prompts drawn (those whose break is harmless are skipped)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=1.0, help="the refine turn's sampling temperature")
    args = ap.parse_args()
    m = UMM.from_pretrained(args.model)
    tok, eos, pad = m.tokenizer, m.tokenizer.eos_token_id, m.tokenizer.pad_token_id
    rng = np.random.default_rng(args.seed)
    batcher = Batcher(m, PretrainConfig(out=args.model), rng)
    metas, shown_codes, reflect, refine = [], [], [], []
    for meta in make_prompts(args.n, args.split, args.seed):
        shown, answer, _ = edit_pair(meta, sample_scene(meta, rng), rng)
        if answer == NO_EDIT:
            continue
        codes = batcher.codes(shown)
        ctx, truthful = batcher.reflect_turn(codes, meta, shown, answer)  # pretraining's own reflect row
        metas.append(meta)
        shown_codes.append(codes)
        reflect.append(ctx)
        refine.append(ctx + truthful + m.refine_turn(m.ids(answer), codes))
    gen = torch.Generator().manual_seed(args.seed)
    new = generate_image_tokens(
        m.backbone, m.layout, refine, sampling=SamplingConfig(args.temperature), generator=gen, pad_id=pad
    )
    right = np.mean([evaluate(img, meta)[0] for img, meta in zip(m.vq.decode(new), metas)])
    copied = np.mean([bool(torch.equal(a, b)) for a, b in zip(new, shown_codes)])
    answers = generate_text(m.backbone, reflect, 48, eos, m.layout.image_offset, pad_id=pad)
    stops = np.mean([is_no_edit(" ".join(tok.convert_ids_to_tokens([t for t in a if t != eos]))) for a in answers])
    print(
        f"{args.model} ({args.split} split, {len(metas)} broken images): refine right {right:.3f}, "
        f"copied {copied:.3f}; own reflection stops on {stops:.3f} of them"
    )


if __name__ == "__main__":
    main()

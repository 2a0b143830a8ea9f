"""How much GRPO signal the GvU reward carries *inside* a group, where GRPO reads it.

`umm-plugin eval` reports the reward-vs-correctness AUC pooled over prompts; GRPO only compares samples of the same
prompt. For `--prompts` prompts of one split, G samples each (the rollout sampler), this prints:
- the share of groups with at least one correct sample (the groups that can teach "right beats wrong");
- the within-group AUC, averaged over the groups that hold both right and wrong samples, next to the pooled AUC;
- per category: sample accuracy, groups with a right sample, within-group AUC.

    python bench/gvu_groups.py --model runs/shapes-weak [--split train] [--prompts 200] [--g 8] [--min-p 0]
"""

import argparse
from collections import defaultdict

import numpy as np
import torch

from umm_plugin.eval import CHUNK, generate_images, roc_auc
from umm_plugin.models.generation import SamplingConfig
from umm_plugin.models.umm import UMM
from umm_plugin.rewards.gvu import gvu_reward
from umm_plugin.worlds.evaluator import evaluate
from umm_plugin.worlds.grammar import make_prompts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", default="train", choices=["train", "eval"])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--g", type=int, default=8)
    ap.add_argument("--min-p", type=float, default=0.0)
    ap.add_argument("--include-eos", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model = UMM.from_pretrained(args.model)
    metas = make_prompts(args.prompts, args.split, args.seed)
    prompts = [m["prompt"] for m in metas for _ in range(args.g)]
    with torch.no_grad():
        codes, images = generate_images(model, prompts, SamplingConfig(min_p=args.min_p), seed=args.seed)
        rewards = torch.cat(
            [
                gvu_reward(model, codes[i : i + CHUNK], prompts[i : i + CHUNK], bool(args.include_eos))
                for i in range(0, len(prompts), CHUNK)
            ]
        ).numpy()
    ok = np.array([evaluate(img, metas[i // args.g])[0] for i, img in enumerate(images)])
    rewards, ok = rewards.reshape(-1, args.g), ok.reshape(-1, args.g)
    rows = defaultdict(lambda: {"acc": [], "any": [], "auc": []})
    for m, r, y in zip(metas, rewards, ok):
        for key in (m["tag"], "all"):
            rows[key]["acc"].append(y.mean())
            rows[key]["any"].append(y.any())
            if 0 < y.sum() < len(y):
                rows[key]["auc"].append(roc_auc(r, y))
    print(f"{args.model}: {args.prompts} {args.split} prompts x G {args.g}, min-p {args.min_p}")
    print(
        f"pooled AUC {roc_auc(rewards.ravel(), ok.ravel()):.3f}; mean reward {rewards.mean():.3f}; mean within-group "
        f"reward std {rewards.std(1, ddof=1).mean():.4f}"
    )
    print(f"{'category':<16}{'accuracy':>10}{'groups w/ right':>17}{'mixed groups':>14}{'within AUC':>12}")
    for key, row in sorted(rows.items(), key=lambda kv: kv[0] == "all"):
        auc = f"{np.mean(row['auc']):.3f}" if row["auc"] else "-"
        print(f"{key:<16}{np.mean(row['acc']):>10.3f}{np.mean(row['any']):>17.3f}{len(row['auc']):>14}{auc:>12}")


if __name__ == "__main__":
    main()

"""Throughput of a recipe at several topologies, side by side in one run: samples per second of rollout, of training
and of the whole step, from the `timing/*` metrics each step writes to metrics.jsonl (the first step, which pays
for warm-up, left out), and the result of the last step, which should not depend on the topology.

    python bench/scale.py [--recipe gvu] [--topologies 1x1 2x2] [--steps 50] [--out runs/scale] [-- flags]

A topology AxE is A actor ranks (and as many reference ranks) and E rollout engines (`--actors A --engines E`). On
a machine with fewer cores than ranks, the ranks share the cores (the recipes tell a local Ray it has enough CPUs),
so 2x2 on 2 cores measures the overhead of the split (gloo all-reduce, a second engine, two weight broadcasts), not
a speed-up. Evaluation is off (`--umm.eval.steps 0`). On 2 cores GvU takes about 3 min at 1x1 and 5 at 2x2.
Flags after `--` go to the recipe's train_ppo_ray (`-- --umm.sampling.min_p 0.03`). The GPU variant: `--gpu` (one
GPU per actor rank, its reference rank and engine beside it, so E <= A), with `--model DIR --prompts FILE` for a
real model, e.g. `--gpu --model Janus-Pro-1B --prompts geneval.jsonl --topologies 1x1 2x2 --lora`. The runs stay
under --out.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", choices=("gvu", "srum", "r3"), default="gvu")
    ap.add_argument("--topologies", nargs="+", default=["1x1", "2x2"])
    ap.add_argument("--steps", type=int, default=50, help="RL steps per run (a multiple of the recipe's 50).")
    ap.add_argument("--out", default="runs/scale")
    ap.add_argument("--gpu", action="store_true", help="The recipes' --gpu: ranks and engines on GPUs.")
    ap.add_argument("--model", help="The recipe's --model (a Janus directory); default its ShapesWorld base.")
    ap.add_argument("--prompts", help="The recipe's --prompts (GenEval-format JSONL).")
    ap.add_argument("--lora", action="store_true", help="The recipe's --lora.")
    ap.add_argument("extra", nargs="*", help="Flags for the recipe's train_ppo_ray, after --.")
    args = ap.parse_args()
    rows = []
    for topo in args.topologies:
        actors, engines = (int(x) for x in topo.split("x"))
        run = Path(args.out) / f"{args.recipe}-{topo}"
        shutil.rmtree(run, ignore_errors=True)
        run.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["bash", f"recipes/{args.recipe}.sh", "--steps", str(args.steps), "--actors", str(actors)]
        cmd += ["--engines", str(engines)] + ["--gpu"] * args.gpu + ["--lora"] * args.lora
        cmd += ["--model", args.model] if args.model else []
        cmd += ["--prompts", args.prompts] if args.prompts else []
        cmd += ["--", "--umm.eval.steps", "0", *args.extra]
        env = os.environ | {"UMM_OUT": str(run), "UMM_PYTHON": sys.executable}
        t0 = time.time()
        with open(f"{run}.log", "w") as log:
            subprocess.run(cmd, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.time() - t0
        steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]
        mean = {k: statistics.mean(s[k] for s in steps) for k in steps[0] if k.startswith(("timing/", "rollout/"))}
        n = mean["rollout/num_samples"]
        row = {"topology": topo, "wall_s": wall, "rollout": n / mean["timing/generation"]}
        row |= {"train": n / mean["timing/ppo_train"], "step": n / mean["timing/step_total"]}
        row["broadcast_s"] = mean["timing/broadcast"]
        row["last_reward"] = steps[-1]["reward"]
        rows.append(row)
    base = rows[0]
    print(f"`python bench/scale.py {' '.join(sys.argv[1:])}` ({os.cpu_count()} cores{', GPUs' * args.gpu};"
          f" samples per second, steps 2-{args.steps})\n")  # fmt: skip
    print("| topology | rollout | train | whole step | step vs first | weight sync s | last-step reward | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['topology']} | {r['rollout']:.1f} | {r['train']:.1f} | {r['step']:.1f} | "
            f"{r['step'] / base['step']:.2f}x | {r['broadcast_s']:.2f} | {r['last_reward']:.4f} | {r['wall_s']:.0f} |"
        )


if __name__ == "__main__":
    main()

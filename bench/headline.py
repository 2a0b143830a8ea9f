"""The README's headline per recipe: median and range over RL seeds on the default base a clean machine pretrains.

For each seed it runs the recipe as shipped (`bash recipes/<recipe>.sh -- --train.seed S`, the base pretrained by
the recipe if missing; a run cut short, without its final `actor/`, goes on from its last checkpoint with
`--resume`, or without one is deleted and run again), then evaluates the
base and every final policy on the same held-out prompts (`umm-plugin eval --n N --seed 1`, plain T 1 as the
rollouts sample; R3 also `--rounds 4`), and prints one markdown
block: each run's figures, then median [min, max]. The runs and their eval JSON stay under `--out` (a run already
there is evaluated, not rerun). Time on 2 CPU cores, per seed: GvU about 20 min, SRUM about 15, R3 about 25.

    python bench/headline.py --recipe gvu [--seeds 0 1 2] [--n 2000] [--out runs/headline]
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

BASES = {"gvu": "runs/shapes-weak", "srum": "runs/shapes-weak", "r3": "runs/shapes-weak-r3p"}
EXTRA = {"gvu": [], "srum": [], "r3": ["--judge", "self"]}


def evaluate(model: Path, json_path: Path, n: int, rounds: int) -> dict:
    if not json_path.is_file():
        cmd = [sys.executable, "-m", "umm_plugin.cli", "eval", "--model", str(model), "--n", str(n), "--seed", "1"]
        cmd += ["--json", str(json_path)] + (["--rounds", str(rounds)] if rounds else [])
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    report = json.loads(json_path.read_text())
    row = {"generation": report["generation"]["overall"], "understanding": report["understanding"]["overall"]}
    if rounds:
        row["after_rounds"] = report["r3"]["accuracy_by_round"][-1]
        row["reflection"] = report["r3"]["reflection_accuracy_by_round"][0]
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", choices=tuple(BASES), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=2000, help="Held-out prompts of each evaluation.")
    ap.add_argument("--out", default="runs/headline")
    args = ap.parse_args()
    out, base = Path(args.out), Path(os.environ.get("UMM_BASE", BASES[args.recipe]))
    out.mkdir(parents=True, exist_ok=True)
    rounds = 4 if args.recipe == "r3" else 0
    runs = {}
    for seed in args.seeds:
        run = out / f"{args.recipe}-seed{seed}"
        if not (run / "actor").is_dir():  # OpenRLHF saves actor/ when training ends; policy/ is saved along the way
            resume = (run / "ckpt" / "_actor" / "latest").is_file()  # cut short after a checkpoint: go on from it
            if not resume:
                shutil.rmtree(run, ignore_errors=True)
            t0 = time.time()
            env = os.environ | {"UMM_OUT": str(run), "UMM_BASE": str(base), "UMM_PYTHON": sys.executable}
            with open(out / f"{args.recipe}-seed{seed}.log", "a" if resume else "w") as log:
                cmd = ["bash", f"recipes/{args.recipe}.sh", *EXTRA[args.recipe], *(["--resume"] if resume else [])]
                cmd += ["--", "--train.seed", str(seed)]
                subprocess.run(cmd, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
            print(f"{run}: {(time.time() - t0) / 60:.1f} min", file=sys.stderr)
        runs[seed] = evaluate(run / "policy", run / f"eval_n{args.n}.json", args.n, rounds)
    before = evaluate(base, out / f"{base.name}_eval_n{args.n}.json", args.n, rounds)
    keys = list(before)
    print(f"`python bench/headline.py --recipe {args.recipe} --seeds {' '.join(map(str, args.seeds))} --n {args.n}`")
    print(f"(base `{base}`; held-out n {args.n}, eval seed 1, T 1)\n")
    print("| run | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    print("| base | " + " | ".join(f"{before[k]:.3f}" for k in keys) + " |")
    for seed, row in runs.items():
        print(f"| {args.recipe} seed {seed} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    cells = []
    for k in keys:
        vals = [row[k] for row in runs.values()]
        cells.append(f"{statistics.median(vals):.3f} [{min(vals):.3f}, {max(vals):.3f}]")
    print(f"| median [min, max] over {len(runs)} seeds | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

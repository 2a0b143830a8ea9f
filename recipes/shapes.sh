#!/usr/bin/env bash
# The main job on CPU: pretrain the weak ShapesWorld base (or reuse it), run GvU on it through OpenRLHF's
# train_ppo_ray (recipes/gvu.sh), and print held-out ShapesWorld accuracy before and after, sampled both as the
# rollouts are (plain T 1) and with the GvU authors' min-p 0.03.
#   bash recipes/shapes.sh [BASE_DIR] [RUN_DIR] [gvu.sh options, e.g. --smoke]
# Defaults runs/shapes-weak and runs/gvu; SEED sets the base's seed, UMM_EVAL_N the held-out prompts (400).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-runs/shapes-weak}
RUN=${2:-runs/gvu}
shift $(($# < 2 ? $# : 2))
N=${UMM_EVAL_N:-400}
PY=${UMM_PYTHON:-${UMM_VENV:-.venv}/bin/python}
UMM=("$PY" -m umm_plugin.cli)
if [ ! -f "$BASE/umm_config.json" ]; then
  "${UMM[@]}" shapes pretrain --out "$BASE" --gap weak --seed "${SEED:-0}"
fi
"${UMM[@]}" shapes check --n 1000 --model "$BASE"
for mp in 0 0.03; do
  "${UMM[@]}" eval --model "$BASE" --n "$N" --min-p $mp --json "$RUN.before.min_p$mp.json"
done
UMM_PYTHON="$PY" UMM_BASE="$BASE" UMM_OUT="$RUN" bash recipes/gvu.sh "$@"
for mp in 0 0.03; do
  "${UMM[@]}" eval --model "$RUN/policy" --n "$N" --min-p $mp --json "$RUN/eval.min_p$mp.json"
done
"${UMM[@]}" generate --model "$RUN/policy" --prompt "a photo of a red circle to the left of a blue square" --n 8 \
  --out "$RUN/sample_grid.png"
"$PY" - "$RUN" <<'EOF'
import json, sys
run = sys.argv[1]
for mp in ("0", "0.03"):
    before, after = (json.load(open(p)) for p in (f"{run}.before.min_p{mp}.json", f"{run}/eval.min_p{mp}.json"))
    for key in ("generation", "understanding"):
        b, a = before[key]["overall"], after[key]["overall"]
        rel = f"{(a / b - 1) * 100:+.0f}% rel." if b else "n/a"
        print(f"held-out {key:<13} (min-p {mp:<4}): before {b:.3f}  after GvU {a:.3f}  ({rel})")
EOF

#!/usr/bin/env bash
# The main job on CPU: pretrain the weak ShapesWorld base (or reuse it), run GvU on it through OpenRLHF's
# train_ppo_ray (recipes/gvu.sh), and print held-out ShapesWorld accuracy before and after.
#   bash recipes/shapes.sh [BASE_DIR] [RUN_DIR]     (defaults runs/shapes-weak, runs/gvu; SEED sets the base's seed)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-runs/shapes-weak}
RUN=${2:-runs/gvu}
PY=${UMM_PYTHON:-${UMM_VENV:-.venv}/bin/python}
UMM=("$PY" -m umm_plugin.cli)
if [ ! -f "$BASE/umm_config.json" ]; then
  "${UMM[@]}" shapes pretrain --out "$BASE" --gap weak --seed "${SEED:-0}"
fi
"${UMM[@]}" shapes check --n 1000 --model "$BASE"
[ -f "$BASE/eval.json" ] || "${UMM[@]}" eval --model "$BASE" --n 400 --json "$BASE/eval.json"
UMM_PYTHON="$PY" UMM_BASE="$BASE" UMM_OUT="$RUN" bash recipes/gvu.sh
"${UMM[@]}" eval --model "$RUN/policy" --n 400 --json "$RUN/eval.json"
"${UMM[@]}" generate --model "$RUN/policy" --prompt "a photo of a red circle to the left of a blue square" --n 8 \
  --out "$RUN/sample_grid.png"
"$PY" - "$BASE/eval.json" "$RUN/eval.json" <<'EOF'
import json, sys
before, after = (json.load(open(p)) for p in sys.argv[1:])
for name, key in (("generation", "generation"), ("understanding", "understanding")):
    b, a = before[key]["overall"], after[key]["overall"]
    print(f"held-out {name} accuracy: before {b:.3f}  after GvU {a:.3f}  ({(a / b - 1) * 100 if b else float('nan'):+.0f}% rel.)")
EOF

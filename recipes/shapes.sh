#!/usr/bin/env bash
# The embedded default on CPU: pretrain the weak ShapesWorld base (or reuse it), evaluate it, draw a sample grid.
# The GvU issue turns this into pretrain -> GvU through train_ppo_ray -> eval before/after.
#   bash recipes/shapes.sh [OUT_DIR]        (default runs/shapes-weak; set SEED to change the seed)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/shapes-weak}
UMM=${UMM_VENV:-.venv}/bin/umm-plugin
if [ ! -f "$OUT/umm_config.json" ]; then
  "$UMM" shapes pretrain --out "$OUT" --gap weak --seed "${SEED:-0}"
fi
"$UMM" shapes check --n 1000 --model "$OUT"
"$UMM" eval --model "$OUT" --n 400 --json "$OUT/eval.json"
"$UMM" generate --model "$OUT" --prompt "a photo of a red circle to the left of a blue square" --n 8 --out "$OUT/grid.png"

#!/usr/bin/env bash
# The GPU check for Janus, in one call: a random-init Janus of Janus-Pro-1B's shapes, one GvU step (4 prompts x 8
# images of 576 tokens at 384 px, reward, update) fully fine-tuned and with LoRA, one SRUM online step and one R3
# stage-1 + stage-2 step with LoRA: seconds per phase and peak GPU memory. Needs torch, transformers and peft (the
# plugin itself is read from this checkout). Output also in $OUT.
#
#   bash bench/gpu_janus.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_janus}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
for run in "gvu full" "gvu lora" "srum lora" "r3 lora"; do
  set -- $run
  python3 bench/gpu_janus.py --recipe "$1" --mode "$2" 2>&1 | grep -v Warning | tee "$OUT/$1_step_$2.txt"
done
python3 bench/rollout.py --model janus --sizes 1b --grid 24 --batch 4 2>&1 | grep -v Warning | tee "$OUT/rollout.txt"

#!/usr/bin/env bash
# GvU (token-level intrinsic reward + GRPO) on the ShapesWorld weak base, through OpenRLHF's real train_ppo_ray.
#
#   bash recipes/gvu.sh [--model DIR] [--prompts FILE] [--smoke] [--resume|--overwrite] [--faithful] [--lora]
#                       [--actors N] [--engines N] [--zero 2|3] [--gpu [--no-colocate]] [--steps N]
#                       [-- extra flags]
#
# CPU by default (shared flags in recipes/ppo_cpu.sh). Env: UMM_PYTHON (default .venv/bin/python), UMM_BASE (the
# weak base, pretrained if missing: runs/shapes-weak), UMM_OUT (run dir: runs/gvu, or runs/gvu_smoke with --smoke).
# --model DIR trains another model instead of the ShapesWorld base: a Janus / Janus-Pro directory (judged on its
# decoded pixels); --prompts FILE trains on a GenEval-format JSONL file (default: ShapesWorld training prompts).
# The reward scores the end token too (--gvu.include_eos true), so an extra object costs reward; --faithful keeps
# the authors' settings (prompt tokens only, codes re-tokenized from pixels) for comparison.
# --lora trains LoRA r 8 instead of the whole backbone (what a real-size model needs).
# Measured effect of each default: docs/results.md#gvu.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${UMM_PYTHON:-.venv/bin/python}
BASE=${UMM_BASE:-runs/shapes-weak}
SMOKE=0
STEPS=300
# The whole backbone at lr 1e-4: LoRA r 8 barely moves the 0.85M-parameter ShapesWorld backbone.
LR=1e-4
LORA_RANK=0
# k3 KL beta 0.1 (authors: 0.03) and a cosine lr tail to 0.1x keep the fully fine-tuned policy from hacking its
# reward late in the run.
KL_BETA=0.1
LR_SCHEDULER=cosine_with_min_lr
MIN_LR_RATIO=0.1
GVU_FLAGS=(--gvu.include_eos true --gvu.reencode false)
while [ $# -gt 0 ]; do
  case "$1" in
    --model) BASE=$2; MODEL=$2; shift 2 ;;
    --prompts) PROMPT_FILE=$2; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --resume) RESUME=1; shift ;;
    --actors) ACTORS=$2; shift 2 ;;
    --engines) ENGINES=$2; shift 2 ;;
    --zero) ZERO=$2; shift 2 ;;
    --gpu) GPU=1; shift ;;
    --no-colocate) COLOCATE=0; shift ;;
    --overwrite) OVERWRITE=1; shift ;;
    --faithful) GVU_FLAGS=(--gvu.include_eos false --gvu.reencode true); shift ;;
    --lora) LORA_RANK=8; shift ;;
    --steps) STEPS=$2; STEPS_SET=1; shift 2 ;;
    --) shift; break ;;
    *)
      echo "gvu.sh: unknown option $1 (use --model DIR, --prompts FILE, --smoke, --resume, --overwrite," \
        "--actors N, --engines N, --zero 2|3, --gpu, --no-colocate, --faithful, --lora, --steps N," \
        "-- extra flags)" >&2
      exit 2 ;;
  esac
done
if [ "$SMOKE" = 1 ] && [ -n "${STEPS_SET:-}" ]; then
  echo "gvu.sh: --smoke runs 2 steps; give --smoke or --steps N, not both" >&2
  exit 2
fi

if [ "$SMOKE" = 1 ]; then
  OUT=${UMM_OUT:-runs/gvu_smoke}
  STEPS=2; PROMPTS=2; G=4; EVAL_STEPS=2; EVAL_N=16; SAVE_STEPS=1
else
  OUT=${UMM_OUT:-runs/gvu}
  PROMPTS=8; G=8; EVAL_STEPS=50; EVAL_N=400
fi
source recipes/ppo_cpu.sh
ppo_cpu umm_plugin.openrlhf.gvu_agent gvu_grpo "${GVU_FLAGS[@]}" "$@"

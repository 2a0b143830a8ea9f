#!/usr/bin/env bash
# R3 (reason -> generate -> reflect -> refine, tree-structured stage-wise GRPO) on the ShapesWorld weak base, through
# OpenRLHF's real train_ppo_ray.
#
#   bash recipes/r3.sh [--model DIR] [--prompts FILE] [--judge self|evaluator|openai] [--smoke]
#                      [--resume|--overwrite] [--actors N] [--engines N] [--zero 2|3] [--gpu [--no-colocate]]
#                      [--faithful] [--lora] [--steps N] [-- extra flags]
#
# Even steps are stage 1 (plan + image from the prompt), odd steps stage 2 (reflect + refine from a buffered stage-1
# image); the R3 executor returns the text turn's reward on its tokens and the judge score V as the reward, and the
# token-level `r3_stage` estimator gives A_text / A_img. --judge openai needs --umm.judge.url URL and
# --umm.judge.model NAME after `--`. Every evaluation also runs R3 at inference (reflect-refine rounds until the model
# says "no further edit needed"): curve.csv gets the accuracy after each round and the reflection accuracy,
# rounds_<step>.png shows plans, images and reflections. The diffusion head is trained beside the backbone
# (Flow-GRPO, one SDE step per image, loss weight 2.0, its own AdamW: --umm.head.rl true); `-- --umm.head.rl false`
# trains the AR backbone only. Shared flags: recipes/ppo_cpu.sh.
# --model DIR trains a Janus / Janus-Pro directory instead (judges: self, its yes/no over a checklist from each
# GenEval line, or openai); --prompts FILE a GenEval-format JSONL file (default: ShapesWorld training prompts). Janus
# has no diffusion head, and it cannot draw conditioned on an image: its refine turn draws a new picture from the
# prompt and the reflection's edit instruction, the earlier turns (the picture among them) in context.
# Env: UMM_PYTHON (default .venv/bin/python), UMM_BASE (the base, pretrained if missing: runs/shapes-weak-r3p),
# UMM_OUT (run dir: runs/r3_<judge>[_smoke]).
# Its own base: the weak base with R3's skills at 30 % of pretraining (not 10 %) and 10 % of rows that are the plan
# alone, because stage 2 can only reinforce an edit that sometimes works and stage 1 a plan that follows the prompt.
# Measured effect of each default: docs/results.md#r3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${UMM_PYTHON:-.venv/bin/python}
BASE=${UMM_BASE:-runs/shapes-weak-r3p}
PRETRAIN_FLAGS="--r3-share 0.3 --plan-share 0.1"
SMOKE=0
# 200 steps take about 25 min on a 2-core CPU.
STEPS=200
JUDGE=self
HEAD_RL=true
MAX_LEN=384  # with --model 2048: a Janus-Pro reflect turn alone holds 576 image placeholders
# The whole backbone at lr 1e-4, k3 KL beta 0.1, cosine lr to 0.1x: GvU's defaults. --lora: LoRA r 8, lr 2e-4,
# beta 0.03, constant lr.
LR=1e-4
LORA_RANK=0
KL_BETA=0.1
LR_SCHEDULER=cosine_with_min_lr
MIN_LR_RATIO=0.1
# Stage 2 scores the stop decision symmetrically (ours): a wrong stop costs C = -1 as a right one earns +1 (the
# authors' C = 0 for a wrong stop taught the weak base always to stop). P(perfect) 0.575 sets where the sampled stop
# rate settles so that greedy inference stops on right images and edits wrong ones. V is the authors' 0/1 verdict.
# --faithful: the authors' stop reward and P(perfect) 0.15. The self judge's caption names colours (--r3.caption
# colours; a greedy caption skips them, so colour mistakes passed as perfect).
R3_FLAGS=(--r3.stop_penalty 1 --r3.p_perfect 0.575)
while [ $# -gt 0 ]; do
  case "$1" in
    --model) BASE=$2; MODEL=$2; HEAD_RL=false; MAX_LEN=2048; shift 2 ;;
    --prompts) PROMPT_FILE=$2; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --resume) RESUME=1; shift ;;
    --actors) ACTORS=$2; shift 2 ;;
    --engines) ENGINES=$2; shift 2 ;;
    --zero) ZERO=$2; shift 2 ;;
    --gpu) GPU=1; shift ;;
    --no-colocate) COLOCATE=0; shift ;;
    --overwrite) OVERWRITE=1; shift ;;
    --judge) JUDGE=$2; shift 2 ;;
    --steps) STEPS=$2; STEPS_SET=1; shift 2 ;;
    --faithful) R3_FLAGS=(--r3.stop_penalty 0 --r3.p_perfect 0.15); shift ;;
    --lora) LR=2e-4; LORA_RANK=8; KL_BETA=0.03; LR_SCHEDULER=constant_with_warmup; MIN_LR_RATIO=1; shift ;;
    --) shift; break ;;
    *) echo "r3.sh: unknown option $1 (use --model DIR, --prompts FILE, --judge J, --smoke, --resume," \
         "--overwrite, --actors N, --engines N, --zero 2|3, --gpu, --no-colocate, --faithful, --lora," \
         "--steps N, -- extra flags)" >&2
       exit 2 ;;
  esac
done
if [ "$SMOKE" = 1 ] && [ -n "${STEPS_SET:-}" ]; then
  echo "r3.sh: --smoke runs 2 steps; give --smoke or --steps N, not both" >&2
  exit 2
fi
NAME=r3_$JUDGE
if [ "$SMOKE" = 1 ]; then
  NAME=${NAME}_smoke
  STEPS=2; PROMPTS=2; G=4; EVAL_STEPS=2; EVAL_N=8; ROUNDS=1; SAVE_STEPS=1
else
  PROMPTS=8; G=8; EVAL_STEPS=50; EVAL_N=200; ROUNDS=4
fi
OUT=${UMM_OUT:-runs/$NAME}
source recipes/ppo_cpu.sh
ppo_cpu umm_plugin.openrlhf.r3_agent r3_stage --r3.judge "$JUDGE" --r3.eval_rounds $ROUNDS \
  --umm.head.rl $HEAD_RL "${R3_FLAGS[@]}" "$@"

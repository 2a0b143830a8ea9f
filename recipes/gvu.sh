#!/usr/bin/env bash
# GvU (token-level intrinsic reward + GRPO) on the ShapesWorld weak base, through OpenRLHF's real train_ppo_ray.
#
#   bash recipes/gvu.sh [--smoke] [--faithful] [--lora] [--steps N] [-- extra train_ppo_ray flags]
#
# CPU by default (Ray + DeepSpeed on gloo, the plugin's UMM rollout engine; shared flags in recipes/ppo_cpu.sh).
# On GPUs drop the CPU flags there (--ds.device, --ds.param_dtype fp32, --vllm.sync_backend gloo, --rollout.engine).
# Env: UMM_PYTHON (default .venv/bin/python), UMM_BASE (weak base dir, pretrained if missing: runs/shapes-weak),
# UMM_OUT (run dir: runs/gvu, or runs/gvu_smoke with --smoke).
# Defaults: DESIGN.md's measured ones (ROBUST judge, include_eos on, the whole backbone trained at lr 1e-4) with k3 KL
# beta 0.1 and OpenRLHF's default cosine lr schedule (to 0.1x at the last step); --faithful keeps the authors' settings
# (include_eos off, codes re-tokenized from pixels) for comparison.
# --lora trains LoRA r 8 instead (what a real-size model needs; judge=reference is then the adapter switched off).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${UMM_PYTHON:-.venv/bin/python}
BASE=${UMM_BASE:-runs/shapes-weak}
SMOKE=0
STEPS=300
# Full fine-tuning by default: on the 0.85M-param ShapesWorld backbone LoRA r 8 at lr 1e-4 barely moves the policy
# (KL to the base .016 after 300 steps, held-out accuracy within noise) and at 2e-4 blew up after step ~175; the whole
# backbone at lr 1e-4 (DESIGN.md's prototype setting) moved it (KL .3 by step 200, .7 by 300) and raised held-out
# accuracy .050 -> .100 (n 400) and .057 -> .090 (n 2000); lr 5e-5 only .057 -> .067 (bench/RESULTS.md, session 13).
LR=1e-4
LORA_RANK=0
# beta 0.1 (authors: 0.03) and the cosine tail: at 0.03 with a constant lr the fully fine-tuned policy passed KL .3 by
# step ~175 and began to hack the reward (extra objects, falling own-caption accuracy); it ended at +15 % in one run of
# two. With both, KL stayed under .15 and accuracy rose to the end in both runs (.050 -> .1025 / .0925; session 14).
KL_BETA=0.1
LR_SCHEDULER=cosine_with_min_lr
MIN_LR_RATIO=0.1
UMM_FLAGS=(--umm.include_eos true --umm.reencode false)
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; shift ;;
    --faithful) UMM_FLAGS=(--umm.include_eos false --umm.reencode true); shift ;;
    --lora) LORA_RANK=8; shift ;;
    --steps) STEPS=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "gvu.sh: unknown option $1 (use --smoke, --faithful, --lora, --steps N, -- extra flags)" >&2; exit 2 ;;
  esac
done

if [ "$SMOKE" = 1 ]; then
  OUT=${UMM_OUT:-runs/gvu_smoke}
  STEPS=2; PROMPTS=2; G=4; EVAL_STEPS=2; EVAL_N=16
else
  OUT=${UMM_OUT:-runs/gvu}
  PROMPTS=8; G=8; EVAL_STEPS=50; EVAL_N=400
fi
source recipes/ppo_cpu.sh
ppo_cpu umm_plugin.openrlhf.gvu_agent gvu_grpo "${UMM_FLAGS[@]}" "$@"

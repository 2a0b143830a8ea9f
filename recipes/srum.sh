#!/usr/bin/env bash
# SRUM (global + local self-reward) on the ShapesWorld weak base.
#
#   bash recipes/srum.sh [--model DIR] [--prompts FILE] [--offline] [--smoke] [--resume|--overwrite]
#                        [--actors N] [--engines N] [--zero 2|3] [--gpu [--no-colocate]] [--lora] [--steps N]
#                        [-- extra flags]
#
# --model DIR trains another model instead of the ShapesWorld base (a Janus / Janus-Pro directory: its yes/no
# answers on the decoded image, the questions from each GenEval line; `-- --srum.sam DIR` online or `-- --sam DIR`
# offline proposes regions with SAM; offline it trains its image tokens by the map-weighted NLL, having no diffusion
# head); --prompts FILE trains on a GenEval-format JSONL file (default: ShapesWorld training prompts; offline with
# --model: required).
# --offline: the authors' method, `umm-plugin srum` (self-judged reward maps, then a reward-weighted fine-tune on
#   OpenRLHF's DeepSpeed strategy); extra flags go to it (see `umm-plugin srum --help`).
# default (online, beyond the paper): OpenRLHF's real train_ppo_ray with the SRUM executor, the map pooled onto the
#   image-token grid as per-token rewards and the token-level `srum_dense` estimator; extra flags go to
#   train_ppo_ray (--srum.k, --srum.local_min, --srum.per, --umm.judge.weights, ...). Shared flags: recipes/ppo_cpu.sh.
# Online it trains the whole backbone at lr 1e-4 with k3 KL beta 0.3 and a cosine lr tail to 0.1x (GvU's defaults,
# but beta 0.3: a stronger pull to the base slows the collapse of each shape pair to one arrangement). --lora: LoRA
# r 8 at lr 2e-4, beta 0.03, constant lr.
# The online map (each a --srum.* switch; false is the authors' behaviour): each prompt object claims its own regions
# (assign), a bad region falls below neutral (local_min), the background is scaled by the share of the prompt's
# objects found (missing) and of regions claimed (extra: an extra object costs the whole picture), a stated relation
# is read off the claimed boxes (relation), and every image token also gets its picture's advantage of the map mean,
# weighted 3 (picture).
# On ShapesWorld both modes judge with the `caption` scorer: the weak base's yes/no answers do not read colours or
# relations.
# Both sample at plain T 1 (recipes/ppo_cpu.sh says why); `--min-p 0.03` (offline) or `--umm.sampling.min_p 0.03`
# (online) restores the authors' sampler.
# Env: UMM_PYTHON (default .venv/bin/python), UMM_BASE (weak base, pretrained if missing: runs/shapes-weak),
# UMM_OUT (run dir: runs/srum[_offline][_smoke]), UMM_TAGS (online training categories, below), PROMPT_FLAGS (more
# `umm-plugin shapes prompts` flags online, e.g. --paired-relations).
# Measured effect of each default: docs/results.md#srum.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${UMM_PYTHON:-.venv/bin/python}
BASE=${UMM_BASE:-runs/shapes-weak}
SMOKE=0
OFFLINE=0
STEPS=200
LR=1e-4
LORA_RANK=0
KL_BETA=0.3
LR_SCHEDULER=cosine_with_min_lr
MIN_LR_RATIO=0.1
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
    --offline) OFFLINE=1; shift ;;
    --lora) LR=2e-4; LORA_RANK=8; KL_BETA=0.03; LR_SCHEDULER=constant_with_warmup; MIN_LR_RATIO=1; shift ;;
    --steps) STEPS=$2; STEPS_SET=1; shift 2 ;;
    --) shift; break ;;
    *)
      echo "srum.sh: unknown option $1 (use --model DIR, --prompts FILE, --offline, --smoke, --resume, --overwrite," \
        "--actors N, --engines N, --zero 2|3, --gpu, --no-colocate, --lora, --steps N, -- extra flags)" >&2
      exit 2 ;;
  esac
done
if [ "$SMOKE" = 1 ] && [ -n "${STEPS_SET:-}" ]; then
  echo "srum.sh: --smoke runs 2 steps; give --smoke or --steps N, not both" >&2
  exit 2
fi
NAME=srum
if [ "$OFFLINE" = 1 ]; then NAME=${NAME}_offline; fi
if [ "$SMOKE" = 1 ]; then NAME=${NAME}_smoke; fi
OUT=${UMM_OUT:-runs/$NAME}

if [ "$OFFLINE" = 1 ]; then
  if [ -n "${ACTORS:-}${ENGINES:-}${ZERO:-}${GPU:-}${COLOCATE:-}" ]; then
    echo "srum.sh: --offline runs in one process on CPU; for several ranks run \`torchrun --nproc_per_node N -m" \
      "umm_plugin.cli srum ...\` (--actors, --engines, --zero and --gpu are for the online recipe)" >&2
    exit 2
  fi
  if [ "${RESUME:-0}" = 1 ]; then set -- --resume true "$@"; fi
  if [ "${OVERWRITE:-0}" = 1 ]; then set -- --overwrite true "$@"; fi
  if [ -z "${MODEL:-}" ] && [ ! -f "$BASE/umm_config.json" ]; then
    "$PY" -m umm_plugin.cli shapes pretrain --out "$BASE" --gap weak
  fi
  if [ -n "${MODEL:-}" ]; then  # another model: trained on its image tokens, judged with yes/no questions
    if [ -z "${PROMPT_FILE:-}" ]; then echo "srum.sh: --offline --model needs --prompts FILE" >&2; exit 2; fi
    set -- --scorer prob --train backbone "$@"
  else
    set -- --scorer caption "$@"
  fi
  if [ -n "${PROMPT_FILE:-}" ]; then set -- --prompts "$PROMPT_FILE" "$@"; fi
  if [ "$SMOKE" = 1 ]; then
    SIZE=(--n-prompts 4 --samples 2 --epochs 1 --batch-size 8 --micro-batch-size 4 --eval-n 8)
  else
    SIZE=(--n-prompts 1024 --samples 8 --epochs 2 --batch-size 64 --micro-batch-size 32 --eval-n 400)
  fi
  "$PY" -m umm_plugin.cli srum --model "$BASE" --out "$OUT" "${SIZE[@]}" "$@"
  echo "curve: $OUT/curve.csv  grids: $OUT/grid_*.png  maps: $OUT/maps.png  model: $OUT/model"
  exit 0
fi

if [ "$SMOKE" = 1 ]; then
  STEPS=2; PROMPTS=2; G=4; EVAL_STEPS=2; EVAL_N=16; SAVE_STEPS=1
else
  PROMPTS=8; G=8; EVAL_STEPS=50; EVAL_N=400
fi
# UMM_TAGS=two_object,position,...: train on these categories only (`umm-plugin shapes prompts --tags`; one listed
# twice is drawn twice as often); default all ten.
TAGS=${UMM_TAGS:-}
# The weak base's yes/no answers do not read colours or relations, so ShapesWorld judges with captions; another
# model answers the yes/no questions (prob).
SCORER=caption
if [ -n "${MODEL:-}" ]; then SCORER=prob; fi
source recipes/ppo_cpu.sh
ppo_cpu umm_plugin.openrlhf.srum_agent srum_dense --srum.scorer "$SCORER" --srum.assign true --srum.local_min true \
  --srum.missing true --srum.extra true --srum.relation true --srum.picture 3 "$@"

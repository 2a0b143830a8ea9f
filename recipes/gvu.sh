#!/usr/bin/env bash
# GvU (token-level intrinsic reward + GRPO) on the ShapesWorld weak base, through OpenRLHF's real train_ppo_ray.
#
#   bash recipes/gvu.sh [--smoke] [--faithful] [--steps N] [-- extra train_ppo_ray flags]
#
# CPU by default (Ray + DeepSpeed on gloo, the plugin's UMM rollout engine). On GPUs drop the CPU flags below
# (--ds.device, --ds.param_dtype fp32, --vllm.sync_backend gloo, --rollout.engine) to roll out on vLLM.
# Env: UMM_PYTHON (default .venv/bin/python), UMM_BASE (weak base dir, pretrained if missing: runs/shapes-weak),
# UMM_OUT (run dir: runs/gvu, or runs/gvu_smoke with --smoke).
# Defaults are DESIGN.md's measured ones (ROBUST judge, include_eos on, k3 KL beta 0.03); --faithful keeps the
# authors' settings (include_eos off, codes re-tokenized from pixels) for comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${UMM_PYTHON:-.venv/bin/python}
BASE=${UMM_BASE:-runs/shapes-weak}
SMOKE=0
STEPS=300
UMM_FLAGS=(--umm.include_eos true --umm.reencode false)
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; shift ;;
    --faithful) UMM_FLAGS=(--umm.include_eos false --umm.reencode true); shift ;;
    --steps) STEPS=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "gvu.sh: unknown option $1 (use --smoke, --faithful, --steps N, -- extra flags)" >&2; exit 2 ;;
  esac
done

if [ "$SMOKE" = 1 ]; then
  OUT=${UMM_OUT:-runs/gvu_smoke}
  STEPS=2; PROMPTS=2; G=4; EVAL_STEPS=2; EVAL_N=16
else
  OUT=${UMM_OUT:-runs/gvu}
  PROMPTS=8; G=8; EVAL_STEPS=50; EVAL_N=400
fi
if [ $((STEPS % EVAL_STEPS)) != 0 ]; then
  echo "gvu.sh: --steps $STEPS must be a multiple of $EVAL_STEPS (the engine evaluates and saves every $EVAL_STEPS)" >&2
  exit 2
fi
mkdir -p "$OUT"
if [ ! -f "$BASE/umm_config.json" ]; then
  "$PY" -m umm_plugin.cli shapes pretrain --out "$BASE" --gap weak
fi
"$PY" -m umm_plugin.cli shapes prompts --split train --n $((STEPS * PROMPTS)) --out "$OUT/train.jsonl"
AGENT=$("$PY" -c "import umm_plugin.openrlhf.gvu_agent as m; print(m.__file__)")

export RAY_DEDUP_LOGS=0 TOKENIZERS_PARALLELISM=false
"$PY" -m openrlhf.cli.train_ppo_ray \
  --plugins umm_plugin.openrlhf.plugin:register \
  --rollout.engine umm_plugin.openrlhf.engine:create_engines \
  --train.agent_func_path "$AGENT" \
  --actor.model_name_or_path "$BASE" \
  --data.prompt_dataset "$OUT/train.jsonl" --data.input_key prompt --data.label_key tag \
  --data.max_len 256 --rollout.max_new_tokens 64 \
  --ds.device cpu --ds.param_dtype fp32 --ds.zero_stage 2 --ds.attn_implementation eager \
  --vllm.sync_backend gloo --vllm.num_engines 1 \
  --actor.num_nodes 1 --actor.num_gpus_per_node 1 --ref.num_nodes 1 --ref.num_gpus_per_node 1 \
  --rollout.batch_size $PROMPTS --rollout.n_samples_per_prompt $G --rollout.micro_batch_size $((PROMPTS * G)) \
  --train.batch_size $((PROMPTS * G)) --train.micro_batch_size $((PROMPTS * G)) --train.max_epochs 1 \
  --train.num_episodes 1 --data.max_samples $((STEPS * PROMPTS)) \
  --algo.advantage.estimator gvu_grpo --algo.kl.use_loss --algo.kl.estimator k3 --algo.kl.init_coef 0.03 \
  --rollout.temperature 1.0 --actor.adam.lr 2e-4 --actor.lr_warmup_ratio 0 --actor.min_lr_ratio 1 \
  --actor.lr_scheduler constant_with_warmup \
  --ds.lora.rank 8 --ds.lora.alpha 32 --ds.lora.target_modules q_proj k_proj v_proj o_proj gate_proj up_proj down_proj \
  --umm.judge policy --umm.threads 2 --umm.eval_steps $EVAL_STEPS --umm.eval_n $EVAL_N --umm.log_dir "$OUT" "${UMM_FLAGS[@]}" \
  --ckpt.output_dir "$OUT/actor" --ckpt.path "$OUT/ckpt" --ckpt.save_steps -1 \
  --logger.logging_steps 1 --train.seed 0 \
  "$@"
echo "curve: $OUT/curve.csv  grids: $OUT/grid_*.png  policy checkpoint: $OUT/policy"

# Sourced by the RL recipes: `ppo_cpu AGENT_MODULE ESTIMATOR [extra train_ppo_ray flags]` runs OpenRLHF's real
# train_ppo_ray on CPU (Ray + DeepSpeed on gloo, the plugin's UMM rollout engine; GPU=1: on GPUs) on the ShapesWorld
# base.
# Reads from the recipe: PY, BASE, OUT, STEPS, PROMPTS (per step), G (samples per prompt), EVAL_STEPS, EVAL_N, LR
# (default 2e-4), LORA_RANK (default 8: LoRA r 8 alpha 32 on every linear layer; 0: full fine-tuning), KL_BETA (k3
# KL loss coefficient, default the GvU authors' 0.03), LR_SCHEDULER and MIN_LR_RATIO (default constant lr), TAGS
# (training prompts' categories, comma-separated; default all ten), PROMPT_FLAGS (more `umm-plugin shapes prompts`
# flags) and PRETRAIN_FLAGS; pretrains the weak base (with PRETRAIN_FLAGS) if BASE has none. MODEL (a recipe's
# --model) names another model directory, never pretrained; PROMPT_FILE (--prompts) a GenEval-format prompt file
# used instead of generated ShapesWorld prompts.
# Topology: ACTORS actor ranks and as many reference ranks (the recipes' --actors, default 1; DeepSpeed data
# parallel, ZeRO stage ZERO, --zero, default 2), ENGINES rollout engines (--engines, default 1); each engine serves
# whole prompts (a GRPO group never spans engines).
# Checkpoints (OpenRLHF's DeepSpeed checkpoint of actor, optimizer, scheduler and prompt position, plus the engine's
# state) go to $OUT/ckpt every SAVE_STEPS steps (default EVAL_STEPS), the last two kept. A used $OUT is refused
# unless RESUME=1 (the recipes' --resume: continue from the last checkpoint) or OVERWRITE=1 (--overwrite: delete it).
# GPU=1 (the recipes' --gpu): actor, reference and engine ranks share GPUs (--train.colocate_all: actor rank i's
# GPU holds reference rank i and engine i, so ENGINES <= ACTORS), bf16, SDPA attention; weights still sync over gloo.
# COLOCATE=0 (--no-colocate) gives every actor rank, reference rank and engine a GPU of its own (2 ACTORS +
# ENGINES GPUs).
# MAX_LEN (--data.max_len): 256 on ShapesWorld, 1024 with MODEL (a Janus-Pro image is 576 tokens).
# Image tokens are sampled at plain T 1 (the plugin's default min-p 0): under the GvU authors' min-p 0.03 the
# ShapesWorld weak base draws almost nothing; `-- --umm.sampling.min_p 0.03` restores their sampler.
ppo_cpu() {
  local agent estimator resume=()
  if [ "${COLOCATE:-1}" = 0 ] && [ "${GPU:-0}" != 1 ]; then
    echo "--no-colocate places ranks on GPUs of their own: it goes with --gpu" >&2
    exit 2
  fi
  if [ "${RESUME:-0}" = 1 ] && [ "${OVERWRITE:-0}" = 1 ]; then
    echo "give --resume (continue the run in $OUT) or --overwrite (start it again), not both" >&2
    exit 2
  fi
  if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
    if [ ! -f "$OUT/.umm-plugin" ]; then
      echo "output directory $OUT holds files umm-plugin did not write (no .umm-plugin marker); it never overwrites" \
        "them: set UMM_OUT to a new or empty directory" >&2
      exit 2
    elif [ "${RESUME:-0}" = 1 ] && [ ! -f "$OUT/ckpt/_actor/latest" ]; then
      echo "nothing to resume in $OUT: it holds no checkpoint yet; start again with --overwrite" >&2
      exit 2
    elif [ "${OVERWRITE:-0}" = 1 ]; then
      rm -rf "$OUT"
    elif [ "${RESUME:-0}" != 1 ]; then
      echo "output directory $OUT holds an earlier run: --resume continues it from its last checkpoint," \
        "--overwrite deletes it and starts again" >&2
      exit 2
    fi
  elif [ "${RESUME:-0}" = 1 ]; then
    echo "nothing to resume in $OUT: it holds no run; leave out --resume" >&2
    exit 2
  fi
  if [ "${RESUME:-0}" = 1 ]; then resume=(--ckpt.load_enable); fi
  agent=$("$PY" -c "import $1 as m; print(m.__file__)")
  estimator=$2
  shift 2
  if [ $((STEPS % EVAL_STEPS)) != 0 ]; then
    echo "--steps $STEPS must be a multiple of $EVAL_STEPS (the engine evaluates and saves every $EVAL_STEPS)" >&2
    exit 2
  fi
  if ! [[ "${ACTORS:-1}" =~ ^[1-9][0-9]*$ ]] || [ $((PROMPTS * G % ${ACTORS:-1})) != 0 ]; then
    echo "--actors ${ACTORS}: give a number of actor ranks that divides the $((PROMPTS * G)) samples of a step" >&2
    exit 2
  fi
  if ! [[ "${ENGINES:-1}" =~ ^[1-9][0-9]*$ ]] || [[ ! "${ZERO:-2}" =~ ^[23]$ ]]; then
    echo "--engines ${ENGINES:-1} --zero ${ZERO:-2}: give a positive number of engines and ZeRO stage 2 or 3" >&2
    exit 2
  fi
  mkdir -p "$OUT" && touch "$OUT/.umm-plugin"
  if [ -z "${MODEL:-}" ] && [ ! -f "$BASE/umm_config.json" ]; then
    "$PY" -m umm_plugin.cli shapes pretrain --out "$BASE" --gap weak ${PRETRAIN_FLAGS:-}
  fi
  local train="$OUT/train.jsonl"
  if [ -n "${PROMPT_FILE:-}" ]; then
    train=$PROMPT_FILE
  else
    "$PY" -m umm_plugin.cli shapes prompts --split train --n $((STEPS * PROMPTS)) ${TAGS:+--tags "$TAGS"} \
      ${PROMPT_FLAGS:-} --out "$train"
  fi
  # Each actor and reference rank reserves one CPU, each engine another: a local Ray on fewer cores is told it has
  # that many (the ranks then share the cores), a cluster (RAY_ADDRESS) is taken as it is.
  local cpus=$((2 * ${ACTORS:-1} + ${ENGINES:-1}))
  local device=(--ds.device cpu --ds.param_dtype fp32 --ds.attn_implementation eager)
  if [ "${GPU:-0}" = 1 ]; then
    device=(--ds.device cuda --ds.param_dtype bf16 --ds.attn_implementation sdpa)
    if [ "${COLOCATE:-1}" = 1 ]; then device+=(--train.colocate_all); fi
  elif [ -z "${RAY_ADDRESS:-}" ] && [ "$cpus" -gt "$(nproc)" ]; then
    export RAY_OVERRIDE_RESOURCES="{\"CPU\": $cpus}"
  fi
  # Micro-batches: a rank's whole share on CPU; 4 sequences on a GPU (a Janus-Pro-1B forward over 4 rollouts holds
  # 1.2 GB of fp32 logits over its 118 784 text and image ids).
  local micro=$((PROMPTS * G / ${ACTORS:-1}))
  if [ "${GPU:-0}" = 1 ] && [ $((micro % 4)) = 0 ]; then micro=4; fi
  local max_len=256
  if [ -n "${MODEL:-}" ]; then max_len=1024; fi
  RAY_DEDUP_LOGS=0 TOKENIZERS_PARALLELISM=false "$PY" -m openrlhf.cli.train_ppo_ray \
    --plugins umm_plugin.openrlhf.plugin:register \
    --rollout.engine umm_plugin.openrlhf.engine:create_engines \
    --train.agent_func_path "$agent" \
    --actor.model_name_or_path "$BASE" \
    --data.prompt_dataset "$train" --data.input_key prompt --data.label_key tag \
    --data.max_len "${MAX_LEN:-$max_len}" --rollout.max_new_tokens 64 \
    "${device[@]}" --ds.zero_stage "${ZERO:-2}" \
    --vllm.sync_backend gloo --vllm.num_engines "${ENGINES:-1}" \
    --actor.num_nodes 1 --actor.num_gpus_per_node "${ACTORS:-1}" \
    --ref.num_nodes 1 --ref.num_gpus_per_node "${ACTORS:-1}" \
    --rollout.batch_size $PROMPTS --rollout.n_samples_per_prompt $G \
    --rollout.micro_batch_size $micro --train.batch_size $((PROMPTS * G)) \
    --train.micro_batch_size $micro --train.max_epochs 1 \
    --train.num_episodes 1 --data.max_samples $((STEPS * PROMPTS)) \
    --algo.advantage.estimator "$estimator" --algo.kl.use_loss --algo.kl.estimator k3 \
    --algo.kl.init_coef "${KL_BETA:-0.03}" \
    --rollout.temperature 1.0 --actor.adam.lr "${LR:-2e-4}" --actor.lr_warmup_ratio 0 \
    --actor.lr_scheduler "${LR_SCHEDULER:-constant_with_warmup}" --actor.min_lr_ratio "${MIN_LR_RATIO:-1}" \
    --ds.lora.rank "${LORA_RANK:-8}" --ds.lora.alpha 32 \
    --ds.lora.target_modules q_proj k_proj v_proj o_proj gate_proj up_proj down_proj \
    --umm.judge.weights policy --umm.threads 2 \
    --umm.eval.steps $EVAL_STEPS --umm.eval.n $EVAL_N --umm.log_dir "$OUT" \
    --ckpt.output_dir "$OUT/actor" --ckpt.path "$OUT/ckpt" --ckpt.save_steps "${SAVE_STEPS:-$EVAL_STEPS}" \
    --ckpt.max_num 2 "${resume[@]}" \
    --logger.logging_steps 1 --logger.jsonl_path "$OUT/metrics.jsonl" --train.seed 0 \
    "$@"
  echo "metrics: $OUT/metrics.jsonl  curve: $OUT/curve.csv  grids: $OUT/grid_*.png  policy: $OUT/policy"
}

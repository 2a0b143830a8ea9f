#!/usr/bin/env bash
# Janus through the recipes on one GPU (`--gpu`: actor, reference and rollout engine share it, bf16, weights synced
# over gloo): GvU on the tiny Janus, then GvU (LoRA and full), SRUM online and R3 with LoRA on a random-init Janus of
# Janus-Pro-1B's shapes (576 image tokens at 384 px), each a `--smoke` run (2 steps of 2 prompts x 4 images, one
# evaluation). Prints seconds per step (OpenRLHF's timing/step_total, and its generation part) and the peak GPU
# memory (nvidia-smi every 0.5 s) per run. Needs the environment of recipes/setup.sh on a GPU machine (there pip
# installs PyPI's CUDA build of torch 2.13.0). Output in $OUT (default runs/gpu_recipe).
#
#   bash bench/gpu_recipe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_recipe}
PY=${UMM_PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" - "$OUT" <<'EOF'
import json, sys, torch
from umm_plugin.models.janus import build_tiny_janus, random_janus
out = sys.argv[1]
lines = [
    {"tag": "single_object", "include": [{"class": "stop sign", "count": 1}], "prompt": "a photo of a stop sign"},
    {"tag": "counting", "include": [{"class": "teddy bear", "count": 3}], "prompt": "a photo of three teddy bears"},
    {"tag": "colors", "include": [{"class": "bus", "count": 1, "color": "red"}], "prompt": "a photo of a red bus"},
    {"tag": "two_object", "include": [{"class": "cell phone", "count": 1}, {"class": "dog", "count": 1}],
     "prompt": "a photo of a cell phone and a dog"},
]
open(f"{out}/coco.jsonl", "w").write("".join(json.dumps(line) + "\n" for line in lines))
build_tiny_janus(f"{out}/janus-tiny")
janus = random_janus("1b", seed=0, grid=24)
janus.model.to(torch.bfloat16)
janus.save_pretrained(f"{out}/janus-1b")
EOF
run() {  # run NAME RECIPE FLAGS...: one smoke run, its step times and the GPU's peak memory
  local name=$1 recipe=$2
  shift 2
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/$name.mem" &
  local monitor=$!
  UMM_OUT="$OUT/$name" UMM_PYTHON="$PY" bash "recipes/$recipe.sh" --smoke --gpu --overwrite "$@" \
    > "$OUT/$name.log" 2>&1 || echo "$name failed: see $OUT/$name.log"
  kill "$monitor"
  "$PY" - "$OUT" "$name" <<'EOF'
import json, pathlib, sys
out, name = sys.argv[1:]
metrics = pathlib.Path(f"{out}/{name}/metrics.jsonl")
rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
peak = max(int(v) for v in open(f"{out}/{name}.mem").read().split() if v.isdigit())
steps = ", ".join(f"{r['timing/step_total']:.1f} s ({r['timing/generation']:.1f} s rollout)" for r in rows)
print(f"{name}: steps {steps}; peak GPU memory {peak / 1024:.1f} GiB")
EOF
}
run gvu-tiny gvu --model "$OUT/janus-tiny" --prompts "$OUT/coco.jsonl" --lora
run gvu-1b-lora gvu --model "$OUT/janus-1b" --prompts "$OUT/coco.jsonl" --lora
run gvu-1b-full gvu --model "$OUT/janus-1b" --prompts "$OUT/coco.jsonl"
run srum-1b-lora srum --model "$OUT/janus-1b" --prompts "$OUT/coco.jsonl" --lora
run r3-1b-lora r3 --model "$OUT/janus-1b" --prompts "$OUT/coco.jsonl" --judge self --lora

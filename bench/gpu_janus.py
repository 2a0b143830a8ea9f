"""One GvU step on a random-init Janus of Janus-Pro-1B's shapes, in-process on one GPU: seconds per phase and peak
GPU memory, fully fine-tuned and with LoRA (r 8 on the language model's linear layers).

A step is what the GvU recipe does per batch: rollout (`--prompts` x `--group` images of 576 tokens at 384 px,
sampled without CFG as RL rollouts are, KV cache), reward (decode, then log p(prompt | pixels) through SigLIP, one
pass), GRPO advantages, and the update (teacher-forced log-probs of the image tokens with gradients, the clipped
policy-gradient loss, AdamW) in micro-batches. bf16 weights, fp32 AdamW states (full) on CUDA.
`--shape tiny --device cpu` runs the same code on the tiny Janus as a check that the script works.

    python bench/gpu_janus.py [--mode full|lora] [--prompts 4] [--group 8] [--micro 8] [--shape 1b|tiny]
"""

import argparse
import time

import torch

from umm_plugin.algos.grpo import group_advantages
from umm_plugin.models.generation import SamplingConfig
from umm_plugin.models.janus import random_janus

PROMPTS = [
    "a photo of a red stop sign",
    "a photo of a cell phone and a dog",
    "a photo of three teddy bears",
    "a photo of a bus left of a cat",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("full", "lora"), default="full")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--micro", type=int, default=8, help="sequences per forward/backward of the update")
    ap.add_argument("--shape", choices=("1b", "tiny"), default="1b")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    device, cuda = torch.device(args.device), args.device.startswith("cuda")
    janus = random_janus(args.shape, seed=0, grid=24)
    janus.model.to(device, torch.bfloat16 if cuda else torch.float32)
    if args.mode == "lora":
        from peft import LoraConfig, get_peft_model

        layers = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        targets = [n for n, _ in janus.model.named_modules() if "language_model.layers" in n and n.endswith(layers)]
        get_peft_model(janus.model, LoraConfig(r=8, lora_alpha=32, target_modules=targets))  # layers in place
    else:
        janus.model.requires_grad_(True)
    trained = [p for p in janus.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-6)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts) for _ in range(args.group)]
    sampling = SamplingConfig(temperature=1.0)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    n_params = sum(p.numel() for p in janus.model.parameters())
    print(
        f"{args.shape} Janus {n_params / 1e9:.2f}B params, {args.mode}: {sum(p.numel() for p in trained) / 1e6:.1f}M "
        f"trained; {args.prompts} prompts x {args.group} = {len(prompts)} images of {janus.image_tokens} tokens"
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = {}
    for phase in ("warm-up", "measured"):  # the first step pays for kernel selection and allocator growth
        sync()
        t0 = time.perf_counter()
        codes, old = janus.sample_image_tokens(prompts, sampling, torch.Generator(device).manual_seed(0), True)
        sync()
        t1 = time.perf_counter()
        with torch.no_grad():
            pixels = janus.decode(codes)
            logp, mask = janus.text_logprobs(pixels, janus.describe, prompts)
            reward = torch.exp((logp * mask).sum(-1) / mask.sum(-1)).float().cpu()
        adv, _ = group_advantages(reward.view(args.prompts, args.group))
        adv = adv.flatten()
        sync()
        t2 = time.perf_counter()
        for i in range(0, len(prompts), args.micro):
            part = slice(i, i + args.micro)
            new = janus.image_logprobs(prompts[part], codes[part], sampling)
            ratio = torch.exp(new.float() - old[part].to(device).float())
            a = adv[part].to(device)[:, None]
            loss = -torch.min(ratio * a, ratio.clamp(0.8, 1.2) * a).mean() * (len(new) / len(prompts))
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        times[phase] = (t1 - t0, t2 - t1, t3 - t2, t3 - t0)
    rollout, reward_s, update, total = times["measured"]
    print(
        f"rollout {rollout:.2f} s  reward {reward_s:.2f} s  update {update:.2f} s  step {total:.2f} s "
        f"({len(prompts) * janus.image_tokens / rollout:.0f} image tokens/s in rollout)"
    )
    if cuda:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()

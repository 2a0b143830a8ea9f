"""One GvU, SRUM-online or R3 (stage 1 + stage 2) step on a random-init Janus of Janus-Pro-1B's shapes, in-process
on one GPU: seconds per phase and peak GPU memory, fully fine-tuned and with LoRA (r 8 on the language model's
linear layers).

A step is what the GvU recipe does per batch: rollout (`--prompts` x `--group` images of 576 tokens at 384 px,
sampled without CFG as RL rollouts are, KV cache), reward (decode, then log p(prompt | pixels) through SigLIP, one
pass), GRPO advantages, and the update (teacher-forced log-probs of the image tokens with gradients, the clipped
policy-gradient loss, AdamW) in micro-batches. bf16 weights, fp32 AdamW states (full) on CUDA.
`--shape tiny --device cpu` runs the same code on the tiny Janus as a check that the script works.

SRUM's and R3's phases are in `srum_step` and `r3_step`.

    python bench/gpu_janus.py [--recipe gvu|srum|r3] [--mode full|lora] [--prompts 4] [--group 8] [--micro 8]
                              [--shape 1b|tiny]
"""

import argparse
import math
import time

import torch

from umm_plugin.algos.grpo import group_advantages
from umm_plugin.models.generation import SamplingConfig
from umm_plugin.models.janus import random_janus

META = {  # GenEval lines: what SRUM's and R3's self judges ask about
    "a photo of a red stop sign": {"include": [{"class": "stop sign", "count": 1, "color": "red"}]},
    "a photo of a cell phone and a dog": {
        "include": [{"class": "cell phone", "count": 1}, {"class": "dog", "count": 1}]
    },
    "a photo of three teddy bears": {"include": [{"class": "teddy bear", "count": 3}]},
    "a photo of a bus left of a cat": {
        "include": [{"class": "bus", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}]
    },
}
META = {p: {"prompt": p, **m} for p, m in META.items()}
PROMPTS = list(META)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", choices=("gvu", "srum", "r3"), default="gvu")
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
    step = {"gvu": gvu_step, "srum": srum_step, "r3": r3_step}[args.recipe]
    times = {}
    for phase in ("warm-up", "measured"):  # the first step pays for kernel selection and allocator growth
        times[phase] = step(janus, prompts, args, optimizer, sampling, device, sync)
    t = times["measured"]
    print("  ".join(f"{k} {v:.2f} s" for k, v in t.items()) + f"  step {sum(t.values()):.2f} s")
    if cuda:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def timed(sync):
    """Seconds since the last call, the device synchronized."""
    sync()
    now = time.perf_counter()
    seconds, timed.last = now - getattr(timed, "last", now), now
    return seconds


def update(janus, args, optimizer, device, rows, actions, adv, pixel_values=None):
    """The actor's update on rollout rows: the RL view's log-probs of the action tokens (text and image ids alike)
    with gradients, -A log p per token (the first PPO epoch: ratio 1), AdamW, in micro-batches of `args.micro`."""
    from umm_plugin.models.generation import left_pad
    from umm_plugin.models.janus import janus_for_rl_class

    rl = janus.model
    rl.__class__ = janus_for_rl_class()  # the actor's view of the same weights (no parameters of its own)
    for i in range(0, len(rows), args.micro):
        ids, mask = left_pad(rows[i : i + args.micro], janus.pad_id)
        ids, mask = ids.to(device), mask.to(device)
        pix = None if pixel_values is None else pixel_values[i : i + args.micro]
        logp = torch.log_softmax(rl(ids, attention_mask=mask, pixel_values=pix).logits[:, :-1], -1)
        logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        weight = torch.zeros_like(logp)
        for k, (a, b) in enumerate(actions[i : i + args.micro]):
            shift = ids.shape[1] - len(rows[i + k]) - 1  # left padding, and position t scores token t + 1
            weight[k, a + shift : b + shift] = adv[i + k]
        (-(weight * logp).sum() / len(rows)).backward()
    rl.__class__ = type(rl).__mro__[1]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def gvu_step(janus, prompts, args, optimizer, sampling, device, sync):
    """Rollout, GvU's reward (decode, log p(prompt | pixels) in one pass), group advantages, the update."""
    timed(sync)
    codes, old = janus.sample_image_tokens(prompts, sampling, torch.Generator(device).manual_seed(0), True)
    t = {"rollout": timed(sync)}
    with torch.no_grad():
        pixels = janus.decode(codes)
        logp, mask = janus.text_logprobs(pixels, janus.describe, prompts)
        reward = torch.exp((logp * mask).sum(-1) / mask.sum(-1)).float().cpu()
    adv, _ = group_advantages(reward.view(args.prompts, args.group))
    adv = adv.flatten()
    t["reward"] = timed(sync)
    for i in range(0, len(prompts), args.micro):
        part = slice(i, i + args.micro)
        new = janus.image_logprobs(prompts[part], codes[part], sampling)
        ratio = torch.exp(new.float() - old[part].to(device).float())
        a = adv[part].to(device)[:, None]
        loss = -torch.min(ratio * a, ratio.clamp(0.8, 1.2) * a).mean() * (len(new) / len(prompts))
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t["update"] = timed(sync)
    return t


def srum_step(janus, prompts, args, optimizer, sampling, device, sync):
    """Rollout, SRUM's self-judged reward map (decode, up to 5 colour-component regions, every region x object and
    whole-image yes/no in one batch, the map pooled onto the token grid), per-token advantages (each token
    normalized within its group), the update."""
    from umm_plugin.algos.srum import pool_to_grid
    from umm_plugin.rewards.srum import components_proposer, geneval_questions, geneval_scores, reward_map

    timed(sync)
    codes = janus.sample_image_tokens(prompts, sampling, torch.Generator(device).manual_seed(0))
    t = {"rollout": timed(sync)}
    metas = [META[p] for p in prompts]
    with torch.no_grad():
        pixels = janus.decode(codes)
        boxes, crops, questions, owners = geneval_questions(pixels, metas, components_proposer, 5, janus.ask)
        values = torch.cat([janus.yes_no(crops[i : i + 64], questions[i : i + 64]) for i in range(0, len(crops), 64)])
        local, g, found, claimed = geneval_scores(boxes, owners, values.tolist(), metas)
    maps = torch.stack(
        [reward_map(boxes[i], local[i], g[i].item(), janus.image_size, True, 1.0) for i in range(len(prompts))]
    )
    cells = pool_to_grid(maps, math.isqrt(janus.image_tokens)).view(args.prompts, args.group, -1)
    adv = ((cells - cells.mean(1, keepdim=True)) / (cells.std(1, keepdim=True) + 1e-4)).view(len(prompts), -1)
    t["judge"] = timed(sync)
    for i in range(0, len(prompts), args.micro):
        part = slice(i, i + args.micro)
        new = janus.image_logprobs(prompts[part], codes[part], sampling)
        (-(adv[part].to(device) * new.float()).sum() / adv.numel()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t["update"] = timed(sync)
    return t


def r3_step(janus, prompts, args, optimizer, sampling, device, sync):
    """R3's two stages on Janus, as the recipe's executor runs them: stage 1 = a plan (48 text tokens at most, after
    the prefilled <think>), the picture after it, the self judge (yes/no over the line's checklist), the update of
    plan + picture tokens; stage 2 = a reflection on that picture (SigLIP sees it), a refined picture from the prompt
    and the edit with the earlier turns in context, the judge, the update with the pixel values."""
    from umm_plugin.models.generation import left_pad
    from umm_plugin.rewards.r3 import geneval_checklist

    def judge(pixels):
        qs = [geneval_checklist(META[p], janus.ask) for p in prompts]
        flat = [(k, q) for k, q_list in enumerate(qs) for q in q_list]
        yes = janus.yes_no(pixels[[k for k, _ in flat]], [q for _, q in flat]) > 0
        v = torch.zeros(len(prompts)).index_add_(0, torch.tensor([k for k, _ in flat]), yes.float())
        return v / torch.tensor([len(q) for q in qs])

    def text(rows, pixel_values=None):
        ids, mask = left_pad(rows, janus.pad_id)
        return janus.sample_text(ids, mask, pixel_values, 48, 1.0, gen, ("</think>",))

    gen = torch.Generator(device).manual_seed(0)
    timed(sync)
    ctx = [janus.reason_prompt(p) for p in prompts]
    plans = text(ctx)
    rows = [c + p + [janus.boi_id] for c, p in zip(ctx, plans)]
    codes = janus.sample_rows(rows, sampling, gen)
    t = {"stage1_rollout": timed(sync)}
    with torch.no_grad():
        pixels = janus.decode(codes)
        v = judge(pixels)
    t["stage1_judge"] = timed(sync)
    adv = group_advantages(v.view(args.prompts, args.group))[0].flatten()
    seqs = [r + (c + janus.image_offset).tolist() for r, c in zip(rows, codes)]
    actions = [(len(c), len(s)) for c, s in zip(ctx, seqs)]
    update(janus, args, optimizer, device, seqs, actions, adv)
    t["stage1_update"] = timed(sync)

    ctx = [janus.reflect_prompt(pix, p) for pix, p in zip(pixels, prompts)]
    values = janus.pixel_values(pixels)
    answers = text(ctx, values)
    edit = [janus.tokenizer.decode(a, skip_special_tokens=True).rsplit("</think>", 1)[-1].strip() for a in answers]
    rows = [
        c + a + ([] if a[-1:] == [janus.eos_id] else [janus.eos_id]) + janus.refine_turn(p, e)
        for c, a, p, e in zip(ctx, answers, prompts, edit)
    ]
    new = janus.sample_rows(rows, sampling, gen, pixel_values=values)
    t["stage2_rollout"] = timed(sync)
    with torch.no_grad():
        v_new = judge(janus.decode(new))
    t["stage2_judge"] = timed(sync)
    adv = group_advantages((v_new - v).view(args.prompts, args.group))[0].flatten()
    seqs = [r + (c + janus.image_offset).tolist() for r, c in zip(rows, new)]
    actions = [(len(c), len(s)) for c, s in zip(ctx, seqs)]
    update(janus, args, optimizer, device, seqs, actions, adv, values)
    t["stage2_update"] = timed(sync)
    return t


if __name__ == "__main__":
    main()

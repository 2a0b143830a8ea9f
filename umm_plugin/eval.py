"""`umm-plugin eval`: a GenEval-style report of a ShapesWorld UMM's generation, understanding and the gap between.

- generation: images for held-out (eval-split) prompts, decoded by the diffusion head, judged by the exact evaluator;
- understanding: the model's greedy captions of ground-truth renders of the same prompts, read back through the
  prompt grammar and checked against the scene (a caption must name every object, counts and stated colours right);
- own generations: the same caption check against the evaluator's parse of the model's *own* images, and how well
  the GvU reward (the model's p(prompt | its image), one pass) separates correct from wrong generations (ROC AUC);
- R3 (`r3_rounds`): plan + image, then reflect-refine rounds until the model says "no further edit needed":
  accuracy after each round, and reflection accuracy (it stops exactly when the evaluator says the image is right).
"""

import dataclasses

import numpy as np
import torch

from umm_plugin.models.diffusion_head import render_codes
from umm_plugin.models.generation import SamplingConfig, generate_image_tokens, generate_text, left_pad
from umm_plugin.models.umm import DESCRIBE
from umm_plugin.rewards.gvu import gvu_reward
from umm_plugin.rewards.r3 import edit_instruction, format_reward, is_no_edit
from umm_plugin.worlds.evaluator import accuracy_table, check, detect, evaluate
from umm_plugin.worlds.grammar import PromptError, make_prompts, parse_prompt, sample_scene
from umm_plugin.worlds.scene import render

CHUNK = 100


def roc_auc(scores, labels) -> float:
    """P(score of a positive > score of a negative), ties count half (Mann-Whitney U / n_pos n_neg)."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def generate_images(model, prompts, sampling=SamplingConfig(), seed=0, head_steps=4):
    """Image codes and head-decoded pixels for prompts, in chunks; seeded."""
    gen = torch.Generator().manual_seed(seed)
    uncond = model.generation_prompt("")
    codes = []
    for i in range(0, len(prompts), CHUNK):
        part = [model.generation_prompt(p) for p in prompts[i : i + CHUNK]]
        codes.append(
            generate_image_tokens(
                model.backbone,
                model.layout,
                part,
                [uncond] * len(part),
                sampling=sampling,
                generator=gen,
                pad_id=model.tokenizer.pad_token_id,
            )
        )
    codes = torch.cat(codes)
    images = np.concatenate(
        [
            render_codes(model.head, model.scheduler, codes[i : i + CHUNK], head_steps, gen)
            for i in range(0, len(codes), CHUNK)
        ]
    )
    return codes, images


def save_grid(images, caption: str, path, scale: int | None = None) -> None:
    """Up to 4 images a row, each scaled by `scale` (default: to about 128 px), under a caption."""
    from PIL import Image, ImageDraw

    h, w = images[0].shape[:2]
    scale = scale or max(1, 128 // h)
    cols = min(4, len(images))
    rows = (len(images) + cols - 1) // cols
    pad, top = 4, 16
    grid = Image.new("RGB", (cols * (w * scale + pad) + pad, rows * (h * scale + pad) + pad + top), "white")
    for i, img in enumerate(images):
        tile = Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST)
        grid.paste(tile, (pad + (i % cols) * (w * scale + pad), top + pad + (i // cols) * (h * scale + pad)))
    ImageDraw.Draw(grid).text((pad, 2), caption, fill="black")
    grid.save(path)


@torch.no_grad()
def shapes_rollout_stats(model, n: int, include_eos: bool, judge=None, seed=0, sampling=SamplingConfig()):
    """Held-out generation accuracy with the reward-hacking indicators an RL run logs beside the reward.

    Returns (stats, images): accuracy, mean GvU reward (judged by `judge`, default the model's backbone), reward-vs-
    correctness AUC, objects per image, share of images with more objects than the prompt asks for; the images are
    in eval-prompt order, so their first few form the fixed-prompt grid."""
    metas = make_prompts(n, "eval", seed)
    prompts = [m["prompt"] for m in metas]
    codes, images = generate_images(model, prompts, sampling, seed)
    ok = np.array([evaluate(img, m)[0] for img, m in zip(images, metas)])
    objects = np.array([len(detect(img).objects) for img in images])
    wanted = np.array([sum(r["count"] for r in m["include"]) for m in metas])
    parts = [
        gvu_reward(model, codes[i : i + CHUNK], prompts[i : i + CHUNK], include_eos, judge) for i in range(0, n, CHUNK)
    ]
    rewards = torch.cat(parts).numpy()
    stats = {
        "accuracy": float(ok.mean()),
        "reward": float(rewards.mean()),
        "auc": roc_auc(rewards, ok),
        "objects_per_image": float(objects.mean()),
        "extra_object_rate": float((objects > wanted).mean()),
    }
    return stats, images


@torch.no_grad()
def captions(model, codes, max_new_tokens: int = 40) -> list[str]:
    """Greedy answers to the describe-instruction for each image."""
    out = []
    eos, pad = model.tokenizer.eos_token_id, model.tokenizer.pad_token_id
    for i in range(0, len(codes), CHUNK):
        ids, mask = left_pad([model.chat(c, DESCRIBE) for c in codes[i : i + CHUNK]], pad)
        seq = model.backbone.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
        )[:, ids.shape[1] :]
        for row in seq.tolist():
            row = row[: row.index(eos)] if eos in row else row
            out.append(" ".join(model.tokenizer.convert_ids_to_tokens(row)))
    return out


def caption_correct(caption: str, objects) -> bool:
    try:
        return check(parse_prompt(caption).meta(), objects)[0]
    except PromptError:
        return False


@torch.no_grad()
def evaluate_model(model, n=400, seed=0, sampling=SamplingConfig()) -> dict:
    metas = make_prompts(n, "eval", seed)
    prompts, tags = [m["prompt"] for m in metas], [m["tag"] for m in metas]
    codes, images = generate_images(model, prompts, sampling, seed)
    gen_ok = [evaluate(img, m)[0] for img, m in zip(images, metas)]

    rng = np.random.default_rng(seed)
    truth = [sample_scene(m, rng) for m in metas]
    und_ok = [
        caption_correct(c, objs)
        for c, objs in zip(captions(model, model.vq.encode(np.stack([render(o) for o in truth]))), truth)
    ]

    parses = [detect(img) for img in images]
    own_caps = captions(model, model.vq.encode(images))
    own_ok = [caption_correct(c, p.objects) for c, p in zip(own_caps, parses)]
    rewards = {
        eos: torch.cat(
            [
                gvu_reward(model, codes[i : i + CHUNK], prompts[i : i + CHUNK], include_eos=eos)
                for i in range(0, n, CHUNK)
            ]
        )
        for eos in (True, False)
    }
    gen_t, und_t = accuracy_table(tags, gen_ok), accuracy_table(tags, und_ok)
    return {
        "n": n,
        "seed": seed,
        "sampling": dataclasses.asdict(sampling),
        "generation": gen_t,
        "understanding": und_t,
        "gap": und_t["overall"] - gen_t["overall"],
        "own_generations": {
            "understanding": float(np.mean(own_ok)),
            "objects_per_image": float(np.mean([len(p.objects) for p in parses])),
            "gvu_reward_mean": float(rewards[True].mean()),
            "gvu_auc_include_eos": roc_auc(rewards[True].numpy(), gen_ok),
            "gvu_auc_prompt_only": roc_auc(rewards[False].numpy(), gen_ok),
        },
    }


def format_report(r: dict) -> str:
    lines = [f"{'category':<16}{'generation':>12}{'understanding':>15}"]
    for tag in [t for t in r["generation"] if t not in ("overall", "micro")] + ["overall"]:
        lines.append(f"{tag:<16}{r['generation'][tag]:>12.3f}{r['understanding'][tag]:>15.3f}")
    o = r["own_generations"]
    lines += [
        f"gap (understanding - generation): {r['gap']:+.3f}   [n={r['n']}, eval split, seed {r['seed']}, sampling "
        + ", ".join(f"{k} {v:g}" for k, v in r["sampling"].items())
        + "]",
        f"on its own {r['n']} generations: understanding {o['understanding']:.3f}, objects/image "
        f"{o['objects_per_image']:.2f}, GvU reward {o['gvu_reward_mean']:.3f}, reward-vs-correct AUC "
        f"{o['gvu_auc_include_eos']:.3f} (include_eos) / {o['gvu_auc_prompt_only']:.3f} (prompt only)",
    ]
    if "r3" in r:
        r3 = r["r3"]
        lines += [
            "R3 at inference (greedy plan and reflections): accuracy after rounds 0.."
            f"{len(r3['accuracy_by_round']) - 1}: " + " ".join(f"{a:.3f}" for a in r3["accuracy_by_round"]),
            "  reflection accuracy (stops exactly when right) by round: "
            + " ".join(f"{a:.3f}" for a in r3["reflection_accuracy_by_round"])
            + f"; stopped {r3['stopped']:.3f}; plans well-formed {r3['plan_format']:.3f}",
            f"  first reflection says 'no further edit' on {r3['first_stop_when_right']:.3f} of right images, "
            f"{r3['first_stop_when_wrong']:.3f} of wrong ones",
            f"  edits over all rounds: {r3['right_broken']} of {r3['edits_of_right']} of right images broke them, "
            f"{r3['wrong_fixed']} of {r3['edits_of_wrong']} of wrong ones fixed them",
        ]
    return "\n".join(lines)


@torch.no_grad()
def r3_rounds(model, metas, rounds=4, sampling=SamplingConfig(), seed=0, text_tokens=48, keep=4):
    """R3 at inference on prompts `metas`: greedy plan and reflections, images sampled as in training.

    Round 0 is the plan and first image; each later round reflects on the current image and, unless the answer is
    "no further edit needed" (then that prompt stops for good), refines it in the same conversation. Returns
    accuracy after rounds 0..rounds, reflection accuracy per round (over the prompts still going: stop == correct),
    the first reflection's stop rate on right and on wrong first images, the share stopped, the plans' format rate,
    how many edits (over all rounds) were of right images and broke them, of wrong ones and fixed them, and for the
    first `keep` prompts the texts and images of each round.
    """
    bb, lay, tok = model.backbone, model.layout, model.tokenizer
    pad, eos = tok.pad_token_id, tok.eos_token_id
    gen = torch.Generator().manual_seed(seed)
    words = lambda ids: " ".join(tok.convert_ids_to_tokens([t for t in ids if t != eos]))  # noqa: E731

    def refine_context(context, answer, codes):  # the reflect turn, closed by its end token, then the edit it asks for
        instruction = tok.convert_tokens_to_ids(edit_instruction(words(answer)).split())
        return context + answer + ([] if answer[-1:] == [eos] else [eos]) + model.refine_turn(instruction, codes)

    def images_after(rows):
        codes = generate_image_tokens(bb, lay, rows, sampling=sampling, generator=gen, pad_id=pad)
        return codes, model.vq.decode(codes)

    prompts = [m["prompt"] for m in metas]
    stop_plan = tok.convert_tokens_to_ids(["</think>", "<SOM>"])
    contexts = [model.reason_prompt(p) for p in prompts]
    plans = generate_text(bb, contexts, text_tokens, stop_plan, lay.image_offset, pad_id=pad)
    codes, images = images_after([c + p + model.after_plan(p) for c, p in zip(contexts, plans)])
    ok = np.array([evaluate(img, m)[0] for img, m in zip(images, metas)])
    # Copies: a refine writes its images into `images` in place, which would rewrite every earlier round's view.
    record = [{"prompt": p, "texts": [words(q)], "images": [img.copy()]} for p, q, img in zip(prompts, plans, images)]
    accuracy, reflection, active = [float(ok.mean())], [], np.ones(len(metas), dtype=bool)
    edits = {"edits_of_right": 0, "right_broken": 0, "edits_of_wrong": 0, "wrong_fixed": 0}  # over all rounds
    first = {"right": float("nan"), "wrong": float("nan")}  # the first reflection's stop rates (none if rounds == 0)
    for _ in range(rounds):
        idx = np.flatnonzero(active)
        if len(idx) == 0:  # every prompt has stopped: nothing changes, nothing is left to reflect on
            accuracy.append(accuracy[-1])
            reflection.append(float("nan"))
            continue
        contexts = [model.reflect_prompt(codes[i], prompts[i]) for i in idx]
        answers = generate_text(bb, contexts, text_tokens, eos, lay.image_offset, pad_id=pad)
        stop = np.array([is_no_edit(words(a)) for a in answers])
        reflection.append(float((stop == ok[idx]).mean()))
        if len(reflection) == 1:  # reflection accuracy alone hides the base rate: most first images are wrong
            first = {
                w: float(stop[ok == right].mean()) if (ok == right).any() else float("nan")
                for w, right in (("right", True), ("wrong", False))
            }
        active[idx[stop]] = False
        rows = [refine_context(c, a, codes[i]) for c, a, s, i in zip(contexts, answers, stop, idx) if not s]
        edited = idx[~stop]
        if len(rows):
            new_codes, new_images = images_after(rows)
            codes[edited], images[edited] = new_codes, new_images
            was = ok[edited].copy()
            ok[edited] = [evaluate(images[i], metas[i])[0] for i in edited]
            edits["edits_of_right"] += int(was.sum())
            edits["right_broken"] += int((was & ~ok[edited]).sum())
            edits["edits_of_wrong"] += int((~was).sum())
            edits["wrong_fixed"] += int((~was & ok[edited]).sum())
        for j, i in enumerate(idx):
            if i < keep:
                record[i]["texts"].append(words(answers[j]))
                record[i]["images"].append(images[i].copy())
        accuracy.append(float(ok.mean()))
    return {
        "accuracy_by_round": accuracy,
        "reflection_accuracy_by_round": reflection,
        "stopped": float(1 - active.mean()),
        "first_stop_when_right": first["right"],
        "first_stop_when_wrong": first["wrong"],
        "plan_format": float(np.mean([format_reward(words(p)) for p in plans])),
        **edits,
        "record": record[:keep],
    }


def save_rounds(record, path, scale: int = 3) -> None:
    """One row per prompt: the image after each round, then the prompt, the plan and each reflection as text."""
    from PIL import Image, ImageDraw

    h = record[0]["images"][0].shape[0] * scale
    cols = max(len(r["images"]) for r in record)
    line, pad = 11, 4
    row_h = h + pad + line * (1 + max(len(r["texts"]) for r in record))
    grid = Image.new("RGB", (max(cols * (h + pad) + pad, 640), len(record) * row_h + pad), "white")
    draw = ImageDraw.Draw(grid)
    for r, rec in enumerate(record):
        top = pad + r * row_h
        for c, img in enumerate(rec["images"]):
            tile = Image.fromarray(img).resize((h, h), Image.NEAREST)
            grid.paste(tile, (pad + c * (h + pad), top))
        lines = [f"prompt: {rec['prompt']}", f"plan: {rec['texts'][0]}"]
        lines += [f"reflect {k}: {t}" for k, t in enumerate(rec["texts"][1:], 1)]
        for k, text in enumerate(lines):
            draw.text((pad, top + h + pad + k * line), text, fill="black")
    grid.save(path)


@torch.no_grad()
def evaluate_geneval(model, metas: list[dict], sampling=SamplingConfig(), seed=0, chunk=8) -> tuple[dict, np.ndarray]:
    """Any `UnifiedModel` on GenEval-format prompts (`worlds.geneval.load_geneval`): one image per prompt, judged by
    the model itself, GvU's reward exp(mean log p(prompt | image)) and the share of yes/no checks answered yes (the
    line's `yn_question_list`, else the model's own question `model.ask`), per tag and overall. No exact evaluator:
    that needs the world the prompts come from. Returns (report, images in prompt order)."""
    gen = torch.Generator(model.device).manual_seed(seed)
    rewards, checks, images = [], [], []
    for i in range(0, len(metas), chunk):
        part = metas[i : i + chunk]
        prompts = [m["prompt"] for m in part]
        pixels = model.decode(model.sample_image_tokens(prompts, sampling, gen))
        logp, mask = model.text_logprobs(pixels, model.describe, prompts)
        rewards += torch.exp((logp * mask).sum(-1) / mask.sum(-1)).tolist()
        for img, m in zip(pixels, part):
            questions = m.get("yn_question_list") or [model.ask.format(prompt=m["prompt"])]
            checks.append(float((model.yes_no(np.stack([img] * len(questions)), questions) > 0).float().mean()))
        images.append(pixels)
    tags = [m["tag"] for m in metas]
    report = {"n": len(metas), "seed": seed, "sampling": dataclasses.asdict(sampling), "by_tag": {}}
    report["per_prompt"] = [
        {"prompt": m["prompt"], "tag": m["tag"], "gvu_reward": r, "yes_no_pass": c}
        for m, r, c in zip(metas, rewards, checks)
    ]
    for tag in dict.fromkeys(tags + ["overall"]):
        idx = [i for i, t in enumerate(tags) if t == tag or tag == "overall"]
        report["by_tag"][tag] = {
            "n": len(idx),
            "gvu_reward": float(np.mean([rewards[i] for i in idx])),
            "yes_no_pass": float(np.mean([checks[i] for i in idx])),
        }
    return report, np.concatenate(images)


def format_geneval_report(r: dict) -> str:
    lines = [f"{'category':<16}{'n':>6}{'GvU reward':>12}{'yes/no passed':>15}"]
    for tag, row in r["by_tag"].items():
        lines.append(f"{tag:<16}{row['n']:>6}{row['gvu_reward']:>12.3f}{row['yes_no_pass']:>15.3f}")
    lines.append(f"[self-judged: the model scores its own images; seed {r['seed']}; sampling {r['sampling']}]")
    return "\n".join(lines)

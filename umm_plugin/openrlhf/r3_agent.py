"""R3 (reason -> generate -> reflect -> refine) as an OpenRLHF executor: pass this file's path to
`--train.agent_func_path` with `--algo.advantage.estimator r3_stage`.

Tree RL with the host's one-execute-one-experience, contiguous-group loop: a step is stage 1 or stage 2 by the
parity of the engine's weight syncs (even: stage 1; odd: stage 2, once the buffer holds a stage-1 result). vLLM's
actor keeps no sync count, so there every step is stage 1 until it exposes one (not run here: no GPU).
- Stage 1, per sample: the model writes a plan (text up to `</think>`, or `<SOM>` if it skips planning), then the
  image tokens; V = the judge's verdict (0/1, or the checklist's share with `--r3.score checklist` or `staged`),
  F = the plan's format; R = V F + w F. The step's groups replace the `TreeBuffer`'s contents (as groups: the spread
  weighting needs them) when the next stage-2 step starts; with `staged` the buffer keeps the verdict, V == 1.
- Stage 2, per group: the G samples of one host call (one `generate_responses`, i.e. one sampling-params object)
  share one root drawn from the buffer, so the host's prompt is replaced by the root's. Each reflects on the root
  image (`<think> what it sees </think>` then "no further edit needed" or an edit) and, unless it stopped, refines
  it in the same conversation; C = V_new - V_prev (or 1[stop] when V_prev = 1; -stop_penalty for a stop when
  V_prev < 1, 0 in the authors' code); R = w F + C F.
The trajectory's first action segment is the text turn (R on its tokens as `token_rewards`), the image turn follows;
the scalar reward is V (V_prev for a member that stopped). `r3_stage` turns them into A_text and A_img (patch 0006).

Judges (`--r3.judge`): `self` asks the model (the engine's current weights, or the LoRA-free ones with
`--umm.judge.weights reference`) for its greedy caption and, for a relation, its yes/no; `evaluator` is
ShapesWorld's exact checker; `openai` any OpenAI-compatible VLM. V is judged on the codebook render of the tokens
(the head reproduces it), or with `--umm.head.rl` on the diffusion head's render with Flow-GRPO's one SDE step, the
image the head is trained on (`executor.render`, `head_policy.py`).

On another model of the interface (Janus; the UMM engine only) with GenEval-format prompt files: the plan and the
reflection are assistant text after a prefilled "<think>" (`models/janus.py`: `reason_prompt`, `reflect_prompt`);
the reflection sees the root picture through the model's understanding encoder (its placeholders in the prompt, the
pixels sent to the engine as `multi_modal_data` and to the actor as `mm_train_inputs` pixel values); Janus cannot
draw conditioned on an image, so the refine turn draws a new picture from the prompt and the edit instruction with
the earlier turns in context (`refine_turn`). The `self` judge is the model's yes/no over `geneval_checklist`.
"""

import asyncio
import math

import numpy as np
import torch

from umm_plugin.algos.r3 import TreeBuffer
from umm_plugin.models.umm import ASK, DESCRIBE, UMM
from umm_plugin.openrlhf.engine import current_sample, rollout_rng
from umm_plugin.openrlhf.executor import UMMExecutor
from umm_plugin.rewards.openai_judge import OpenAIJudge
from umm_plugin.rewards.r3 import (
    caption_objects,
    checklist_score,
    colour_slot,
    correction,
    edit_instruction,
    format_reward,
    geneval_checklist,
    is_no_edit,
    stage1_rewards,
    stage2_rewards,
)
from umm_plugin.worlds.evaluator import detect
from umm_plugin.worlds.grammar import parse_prompt
from umm_plugin.worlds.scene import COLOR_NAMES

CAPTION_TOKENS = 40


class AgentExecutor(UMMExecutor):
    def __init__(self):
        super().__init__()
        self.r3 = self.config.r3
        self.buffer = TreeBuffer(self.r3.buffer_size, self.r3.p_perfect, self.r3.weighting)
        self.rng_np = np.random.default_rng(0)  # root draws outside the UMM engine
        # Host calls are told apart by their sampling-params object (one per generate_responses call); each entry
        # keeps that object alive so its id cannot be reused while the entry exists.
        self.groups = {}  # stage 1: id -> (params, prompt, [V], [state], order)
        self.roots = {}  # stage 2: id -> (params, drawn root)
        self.merged = None  # stage 2: the step whose stage-1 groups (every engine's) fill the buffer, and its task
        self.openai = None
        if self.r3.judge == "openai":
            judge = self.cfg.judge
            self.openai = OpenAIJudge(judge.url, judge.model, timeout=judge.timeout, retries=judge.retries)

    def state_dict(self) -> dict:
        """What the engine saves with a checkpoint: the stage-2 roots (the buffer) and the last stage-1 step's groups
        (the draws need no state in the UMM engine: they are seeded per group, `engine.rollout_rng`)."""
        groups = [entry[1:] for entry in self.groups.values()]
        return {"buffer": list(self.buffer.entries), "groups": groups}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.entries.clear()
        self.buffer.entries.extend(state["buffer"])
        self.groups = {i: (None, *entry) for i, entry in enumerate(state["groups"])}

    async def stage(self, llm_engine) -> int:
        step = getattr(llm_engine, "syncs", 0)
        if step % 2 == 0:
            self.roots.clear()
            return 1
        if self.merged is None or self.merged[0] != step:  # the step's first stage-2 call fills the buffer
            self.merged = (step, asyncio.ensure_future(self.fill_buffer(llm_engine)))
        await self.merged[1]
        return 2 if len(self.buffer) else 1

    async def fill_buffer(self, llm_engine) -> None:
        """The last stage-1 step's groups replace the buffer (as in the authors' code): on the UMM engine every
        engine's groups in (prompt, rank) order (`exchange`), each group's samples in their order, so the roots stage
        2 draws do not depend on how prompts were spread over engines; elsewhere this executor's own."""
        groups = [entry[1:] for entry in self.groups.values()]
        self.groups.clear()
        if hasattr(llm_engine, "exchange"):
            groups = await llm_engine.exchange(groups)
        if groups:
            self.buffer.entries.clear()
        for prompt, v, states, _ in groups:
            samples = sorted(range(len(v)), key=lambda i: states[i]["sample"])  # in sample order, however judged
            self.buffer.add_group(prompt, [v[i] for i in samples], [states[i] for i in samples])

    async def execute(self, prompt, label, sampling_params, max_length, hf_tokenizer, llm_engine, images=None):
        if await self.stage(llm_engine) == 1:
            return await self.reason_and_generate(prompt, label, sampling_params, llm_engine, images)
        key = id(sampling_params)
        if key not in self.roots:  # the first member of this group draws the group's root
            own = rollout_rng()  # the UMM engine: seeded by the group (engine.rollout_rng); elsewhere the executor's
            rng = self.rng_np if own is None else np.random.default_rng(own[1])
            self.roots[key] = (sampling_params, self.buffer.draw(rng))
        return await self.reflect_and_refine(self.roots[key][1], label, sampling_params, llm_engine, images)

    async def reason_and_generate(self, prompt, label, sampling_params, llm_engine, images):
        umm = self.model(llm_engine)
        tok = umm.tokenizer
        ctx = umm.reason_prompt(prompt)
        if isinstance(umm, UMM):
            end_think, som = tok.convert_tokens_to_ids(["</think>", "<SOM>"])
            plan = await self.generate_text(llm_engine, sampling_params, ctx, self.r3.text_tokens, [end_think, som])
            text = " ".join(tok.convert_ids_to_tokens([t for t in plan if t != som]))
        else:  # the plan's "<think>" is prefilled (Janus has no thinking tokens); it ends at "</think>"
            plan = await self.generate_text(llm_engine, sampling_params, ctx, self.r3.text_tokens, (), ["</think>"])
            text = "<think>" + tok.decode(plan, skip_special_tokens=True)
        ids = ctx + plan + umm.after_plan(plan)  # a `<SOM>` the model wrote stays part of its plan action
        tokens, codes = await self.generate_codes(llm_engine, sampling_params, ids)
        pixels, head = await self.draw(llm_engine, sampling_params, codes)
        v = await self.judge(llm_engine, sampling_params, prompt, codes, pixels, partial=self.r3.score != "binary")
        f = format_reward(text)
        r = float(stage1_rewards(torch.tensor(v), torch.tensor(f), self.r3.w))

        key, owner = id(sampling_params), current_sample()  # owner: (prompt key, rank, sample) on the UMM engine
        order = owner[:2] if owner else (len(self.groups),)
        _, _, vs, states, _ = self.groups.setdefault(key, (sampling_params, prompt, [], [], order))
        vs.append(float(v == 1) if self.r3.score == "staged" else v)
        states.append({"codes": codes, "pixels": pixels, "sample": owner[2] if owner else len(states)})
        observation = ids + tokens
        actions = [(len(ctx), len(ctx) + len(plan)), (len(ids), len(observation))]
        token_rewards = [0.0] * len(observation)
        token_rewards[len(ctx) : len(ctx) + len(plan)] = [r] * len(plan)
        logs = {"r3_stage": 1.0, "r3_v": v, "r3_format": f, "r3_text_reward": r, "r3_plan_tokens": float(len(plan))}
        extra = {"token_rewards": token_rewards, "mm_train_inputs": head}  # head: the SDE step (--umm.head.rl)
        return self.response(llm_engine, prompt, label, images, observation, actions, pixels, v, logs, **extra)

    async def reflect_and_refine(self, root, label, sampling_params, llm_engine, images):
        umm = self.model(llm_engine)
        tok = umm.tokenizer
        prompt, v_prev, codes = root["prompt"], root["v"], root["codes"]
        shapes = isinstance(umm, UMM)
        # Another model sees the root picture through its understanding encoder: the placeholders in its reflect turn
        # show it, in the engine (multi_modal_data) and in the actor (pixel values in mm_train_inputs).
        seen = [] if shapes else [root["pixels"]]
        ctx = umm.reflect_prompt(codes if shapes else root["pixels"], prompt)
        answer = await self.generate_text(llm_engine, sampling_params, ctx, self.r3.text_tokens, images=seen)
        if shapes:
            text = " ".join(tok.convert_ids_to_tokens([t for t in answer if t != tok.eos_token_id]))
        else:
            text = "<think>" + tok.decode(answer, skip_special_tokens=True)
        f, stopped = format_reward(text), is_no_edit(text)
        observation = ctx + answer
        actions = [(len(ctx), len(observation))]
        head = None
        if stopped:  # the image is kept: V_new = V_prev, no image action
            v_new, pixels = v_prev, umm.vq.decode(codes[None])[0] if shapes else root["pixels"]
        else:
            # The refine turn continues the conversation with the edit the reflection asked for.
            end = [] if answer[-1:] == [tok.eos_token_id] else [tok.eos_token_id]
            if shapes:
                turn = umm.refine_turn(tok.convert_tokens_to_ids(edit_instruction(text).split()), codes)
            else:  # Janus cannot draw from an image: a new picture from the prompt and the edit (`refine_turn`)
                turn = umm.refine_turn(prompt, edit_instruction(text))
            ids = observation + end + turn
            tokens, new = await self.generate_codes(llm_engine, sampling_params, ids, seen)
            pixels, head = await self.draw(llm_engine, sampling_params, new, edit=True)
            v_new = await self.judge(llm_engine, sampling_params, prompt, new, pixels, self.r3.score == "checklist")
            actions.append((len(ids), len(ids) + len(tokens)))
            observation = ids + tokens
        if seen:
            head = {"pixel_values": umm.pixel_values(np.stack(seen)).float().cpu()}
        c = correction(torch.tensor([v_new]), torch.tensor([v_prev]), [text], self.r3.stop_penalty)
        r = float(stage2_rewards(c, torch.tensor([f]), self.r3.w)[0])
        token_rewards = [0.0] * len(observation)
        token_rewards[actions[0][0] : actions[0][1]] = [r] * (actions[0][1] - actions[0][0])
        logs = {
            "r3_stage": 2.0,
            "r3_v": v_new,
            "r3_v_prev": v_prev,
            "r3_format": f,
            "r3_text_reward": r,
            "r3_stop": float(stopped),
            "r3_correction": float(c[0]),
            "r3_root_importance": root["importance"],
        }
        if hasattr(llm_engine, "record"):
            # The stop rate on perfect vs imperfect roots shows whether the reflection tells right from wrong (the
            # overall rate only shows its threshold). Engine curve only: the host wants one key set per step.
            llm_engine.record({f"r3_stop_on_{'perfect' if v_prev == 1 else 'imperfect'}_root": float(stopped)})
        # mm_train_inputs: the head's SDE step (--umm.head.rl), or the pixel values of the picture another model saw
        extra = {"token_rewards": token_rewards, "mm_train_inputs": head}
        return self.response(llm_engine, prompt, label, images, observation, actions, pixels, v_new, logs, **extra)

    async def draw(self, llm_engine, sampling_params, codes, edit: bool = False):
        """(pixels, mm_train_inputs) of one image's codes: `render` for ShapesWorld, the engine's batched VQ decode
        for another model (no diffusion head)."""
        if isinstance(self.model(llm_engine), UMM):
            return self.render(llm_engine, sampling_params, codes, edit)
        return await llm_engine.decode(codes), None

    def evaluate(self, model, log_dir, step, sampling) -> dict:
        """The engine's evaluation hook: R3 at inference on held-out prompts (`eval.r3_rounds`), rounds grid saved.
        ShapesWorld only: another model's evaluation is the engine's own GenEval-format one."""
        from umm_plugin.eval import r3_rounds, save_rounds
        from umm_plugin.worlds.grammar import make_prompts

        if not isinstance(model, UMM):
            return {}

        log_dir.mkdir(parents=True, exist_ok=True)
        metas = make_prompts(self.cfg.eval.n, "eval", 0)
        r = r3_rounds(model, metas, self.r3.eval_rounds, sampling, text_tokens=self.r3.text_tokens)
        save_rounds(r["record"], log_dir / f"rounds_{step:05d}.png")
        out = {f"r3_accuracy_round{k}": a for k, a in enumerate(r["accuracy_by_round"])}
        out |= {f"r3_reflection_round{k}": a for k, a in enumerate(r["reflection_accuracy_by_round"], 1)}
        out |= {f"r3_first_stop_when_{w}": r[f"first_stop_when_{w}"] for w in ("right", "wrong")}
        return out | {"r3_stopped": r["stopped"], "r3_plan_format": r["plan_format"]}

    async def judge(self, llm_engine, sampling_params, prompt, codes, pixels, partial: bool) -> float:
        """V in [0, 1] for an image of `prompt`: the checklist's share if `partial`, else 1 exactly when it all
        holds; never a silent 0 (an unreachable openai judge is an error). With --umm.head.rl the image is the head's
        render, which the self judge sees re-tokenized."""
        if self.cfg.head.rl:
            codes = self.model(llm_engine).vq.encode(pixels[None])[0]
        if self.r3.judge == "openai":
            v = await asyncio.to_thread(self.openai.score, prompt, pixels)
        elif self.r3.judge == "evaluator":
            v = checklist_score(parse_prompt(prompt).meta(), detect(pixels).objects)
        elif isinstance(self.model(llm_engine), UMM):
            v = await self.self_judge(llm_engine, sampling_params, prompt, codes)
        else:
            v = await self.geneval_judge(llm_engine, prompt, pixels)
        if not math.isfinite(v) or not 0 <= v <= 1:
            raise ValueError(f"R3 judge {self.r3.judge} gave V = {v} for prompt {prompt!r}: it must lie in [0, 1]")
        return v if partial else float(v == 1)

    async def geneval_judge(self, llm_engine, prompt, pixels) -> float:
        """Another model's own judgement on a GenEval-format line: the share of `geneval_checklist` questions about
        the picture it answers yes to (p(yes) > p(no)), through the engine's batched yes/no."""
        meta = llm_engine.prompt_meta.get(prompt)
        if meta is None:
            raise ValueError(f"prompt {prompt!r} is in neither the training nor the eval prompt file")
        questions = geneval_checklist(meta, self.model(llm_engine).ask)
        values = await asyncio.gather(*[llm_engine.yes_no(pixels, q, **self.judge_kw) for q in questions])
        return float(np.mean([v > 0 for v in values]))

    async def self_judge(self, llm_engine, sampling_params, prompt, codes) -> float:
        """The model's own understanding: its caption names the objects (greedy, with `--r3.caption colours` made to
        name colours, `colour_slot`); for a relation, p(yes) > p(no) to 'is this <prompt> ?'. All from the weights
        `--umm.judge.weights` names."""
        umm, meta = self.model(llm_engine), parse_prompt(prompt).meta()
        kw = self.judge_kw
        params = type(sampling_params)(temperature=0.0, max_tokens=CAPTION_TOKENS)
        params.allowed_token_ids = list(range(umm.layout.image_offset))
        ctx = umm.chat(codes, DESCRIBE)
        caption = await llm_engine.generate(ctx, params, **kw)
        ids = [t for t in caption.outputs[0].token_ids if t != umm.tokenizer.eos_token_id]
        k = colour_slot(umm.tokenizer.convert_ids_to_tokens(ids)) if self.r3.caption == "colours" else None
        if k is not None:  # the best colour word for the first object, then greedy on from it
            colour = type(sampling_params)(temperature=0.0, max_tokens=1)
            colour.allowed_token_ids = umm.ids(" ".join(COLOR_NAMES))
            ids = ids[:k] + (await llm_engine.generate(ctx + ids[:k], colour, **kw)).outputs[0].token_ids
            rest = (await llm_engine.generate(ctx + ids, params, **kw)).outputs[0].token_ids
            ids += [t for t in rest if t != umm.tokenizer.eos_token_id]
        objects, meta = caption_objects(" ".join(umm.tokenizer.convert_ids_to_tokens(ids)), meta)
        relation = None
        if any("position" in r for r in meta["include"]):
            ctx = umm.chat(codes, ASK.format(prompt=prompt))
            score = type(sampling_params)(max_tokens=1, temperature=1.0, prompt_logprobs=0)
            yes, no = umm.ids("yes")[0], umm.ids("no")[0]
            outs = await asyncio.gather(*[llm_engine.generate(ctx + [w], score, **kw) for w in (yes, no)])
            p_yes, p_no = (o.prompt_logprobs[-1][w].logprob for o, w in zip(outs, (yes, no)))
            relation = p_yes > p_no
        return checklist_score(meta, objects, relation)

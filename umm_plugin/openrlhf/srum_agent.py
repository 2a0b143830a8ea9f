"""SRUM online (beyond the paper) as an OpenRLHF executor: pass this file's path to `--train.agent_func_path` with
`--algo.advantage.estimator srum_dense`.

For one prompt sample: generate the image tokens, render them with the diffusion head, and let the model judge its
own picture the SRUM way (`rewards/srum.py`: regions from the proposer, a local score per region, a global score,
the reward map; `--srum.scorer prob` or `caption`). The map pooled onto the image-token grid is returned as
`token_rewards`, one per image token (patch 0006 carries them to the `srum_dense` estimator, which normalises each
token within its group, plus `--srum.picture` x the picture's own group advantage of its map mean). The scores come
from `generate(..., prompt_logprobs=0)` calls (the numbers `rewards/srum.py` computes in one pass), so the same
executor runs on vLLM; `--umm.judge.weights reference` asks the LoRA-free weights. The scalar `reward` (logged) is
the map's mean; the ShapesWorld evaluator is logged beside it, never used as reward.

On another model of the interface (Janus; the UMM engine only), the line's GenEval metadata gives the questions
(`rewards/srum.py`: `geneval_questions`), the model answers them as p(yes) - p(no) on pixels (`--srum.scorer prob`),
regions come from SAM with `--srum.sam DIR`, and the map is pooled onto the model's image-token grid.
"""

import asyncio
import math
from functools import partial

import torch

from umm_plugin.algos.srum import pool_to_grid
from umm_plugin.models.diffusion_head import render_codes
from umm_plugin.models.umm import DESCRIBE, UMM
from umm_plugin.openrlhf.executor import UMMExecutor
from umm_plugin.rewards.srum import (
    NO,
    QUESTION,
    YES,
    collect_scores,
    components_proposer,
    geneval_questions,
    geneval_scores,
    judge_questions,
    reward_map,
)


class AgentExecutor(UMMExecutor):
    def __init__(self):
        super().__init__()
        self.srum = self.config.srum
        self.proposer = None  # a model of the interface: built at its first prompt
        if self.srum.scorer == "text":
            raise ValueError("the online SRUM agent scores with --srum.scorer prob or caption (teacher-forced passes)")

    async def judge(self, llm_engine, sampling_params, codes, questions) -> list[float]:
        """The questions' scores from `prompt_logprobs` requests: prob asks for p(yes) - p(no) as the next word (one
        request per answer word), caption for 2 p(subject + end | image, describe) - 1 (one request each)."""
        umm = self.model(llm_engine)
        params = type(sampling_params)(max_tokens=1, temperature=1.0, prompt_logprobs=0)
        if self.srum.scorer == "prob":
            yes, no = umm.ids(YES), umm.ids(NO)
            rows = [(umm.chat(c, q), [w]) for c, q in zip(codes, questions) for w in yes + no]
        else:
            pre, post = QUESTION.split("{prompt}")
            subjects = [q.removeprefix(pre).removesuffix(post) for q in questions]
            end = [umm.tokenizer.eos_token_id]
            rows = [(umm.chat(c, DESCRIBE), umm.ids(t) + end) for c, t in zip(codes, subjects)]
        outs = await asyncio.gather(*[llm_engine.generate(ctx + tgt, params, **self.judge_kw) for ctx, tgt in rows])
        logp = torch.tensor(
            [
                sum(d[t].logprob for d, t in zip(o.prompt_logprobs[len(ctx) :], tgt)) / len(tgt)
                for o, (ctx, tgt) in zip(outs, rows)
            ]
        )
        if self.srum.scorer == "caption":
            return (2 * logp.exp() - 1).tolist()
        p = logp.exp().reshape(len(questions), len(yes) + len(no))
        return (p[:, : len(yes)].sum(-1) - p[:, len(yes) :].sum(-1)).tolist()

    async def execute(self, prompt, label, sampling_params, max_length, hf_tokenizer, llm_engine, images=None):
        umm, cfg = self.model(llm_engine), self.srum
        ids = umm.generation_prompt(prompt)
        tokens, codes = await self.generate_codes(llm_engine, sampling_params, ids)
        if isinstance(umm, UMM):
            pixels, boxes, scores = await self.judge_shapes(umm, prompt, sampling_params, llm_engine, codes)
            grid, spread = umm.layout.grid, umm.layout.spread  # a reward per code, none on the <EOL>s
        else:
            pixels, boxes, scores = await self.judge_geneval(umm, prompt, llm_engine, codes)
            grid, spread = math.isqrt(umm.image_tokens), list
        local, g, found, claimed = scores
        bg = (found.item() if cfg.missing else 1.0) * (claimed.item() if cfg.extra else 1.0)
        m = reward_map(boxes[0], local[0], g.item(), pixels.shape[0], cfg.local_min, bg)
        cells = pool_to_grid(m[None], grid)[0]

        logs = {"srum_global": g.item(), "srum_map_mean": m.mean().item(), "srum_regions": float(len(boxes[0]))}
        logs.update(srum_found=found.item(), srum_claimed=claimed.item())
        token_rewards = [0.0] * len(ids) + spread(cells.tolist())
        reward = m.mean().item()  # logged; the estimator reads token_rewards
        actions = [(len(ids), len(ids) + len(tokens))]
        return self.response(
            llm_engine,
            prompt,
            label,
            images,
            ids + tokens,
            actions,
            pixels,
            reward,
            logs,
            token_rewards=token_rewards,
        )

    async def judge_shapes(self, umm, prompt, sampling_params, llm_engine, codes):
        """ShapesWorld: the head's render [H, W, 3], its regions, and the scores of `collect_scores`."""
        with torch.no_grad():
            pixels = render_codes(umm.head, umm.scheduler, codes[None], 4, self.rng()[0])
        boxes, q_codes, questions, owners = judge_questions(umm, pixels, [prompt], self.srum.k)
        values = await self.judge(llm_engine, sampling_params, q_codes, questions)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"SRUM judge produced non-finite scores for prompt {prompt!r}")
        return pixels[0], boxes, collect_scores(boxes, owners, values, [prompt], self.srum.assign, self.srum.relation)

    async def judge_geneval(self, umm, prompt, llm_engine, codes):
        """Another model of the interface (Janus) on a GenEval-format line: the decoded image, regions from the
        proposer (`--srum.sam`, else colour components), every question through the engine's batched yes/no, and
        the scores of `geneval_scores`."""
        cfg = self.srum
        meta = llm_engine.prompt_meta.get(prompt)
        if meta is None:
            raise ValueError(f"prompt {prompt!r} is in neither the training nor the eval prompt file")
        if self.proposer is None:
            if cfg.sam:
                from umm_plugin.rewards.sam import SamProposer

                self.proposer = SamProposer.from_pretrained(cfg.sam, k=cfg.k)
                self.proposer.model.to(llm_engine.device)  # beside the model it judges for (a GPU with --gpu)
            else:
                self.proposer = partial(components_proposer, k=cfg.k)
        pixels = await llm_engine.decode(codes)
        boxes, crops, questions, owners = geneval_questions(pixels[None], [meta], self.proposer, cfg.k, umm.ask)
        values = await asyncio.gather(*[llm_engine.yes_no(c, q, **self.judge_kw) for c, q in zip(crops, questions)])
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"SRUM judge produced non-finite scores for prompt {prompt!r}")
        return pixels, boxes, geneval_scores(boxes, owners, values, [meta], cfg.assign, cfg.relation)

"""GvU's rollout + intrinsic reward as an OpenRLHF executor: pass this file's path to `--train.agent_func_path`.

For one prompt sample: generate the image tokens (logits limited to the image vocabulary), optionally decode them
with the diffusion head and re-tokenize (`--umm.reencode`, the authors' way), then score r = exp(mean log p(prompt
[+ end token] | <image> describe the image .)) with one teacher-forced `generate(..., prompt_logprobs=0)` call on
the same engine. `--umm.judge reference` scores with the LoRA-free weights (on the UMM engine: the same weights,
adapter disabled). The ShapesWorld evaluator's verdict is logged beside the reward, never used as reward.

Runs unchanged on vLLM's RolloutRayActor for the generate calls (the backbone is a stock Qwen2); there it loads its
own copy of the small non-backbone parts (visual tokenizer, diffusion head) from the model directory, and
judge=reference needs the engine to serve the base weights (not implemented for vLLM yet).
"""

import math
from copy import deepcopy

import numpy as np
import torch
from openrlhf.utils.agent import AgentExecutorBase

from umm_plugin.models.diffusion_head import render_codes
from umm_plugin.models.umm import DESCRIBE, UMM
from umm_plugin.openrlhf.plugin import umm_config
from umm_plugin.worlds.evaluator import detect, evaluate
from umm_plugin.worlds.grammar import PromptError, parse_prompt


class AgentExecutor(AgentExecutorBase):
    def __init__(self):
        self.cfg = umm_config()
        self.umm = None
        self.generator = torch.Generator().manual_seed(0)

    def model(self, llm_engine) -> UMM:
        if self.umm is None:
            self.umm = getattr(llm_engine, "umm", None) or UMM.from_pretrained(llm_engine.kwargs["model"])
        return self.umm

    async def execute(self, prompt, label, sampling_params, max_length, hf_tokenizer, llm_engine, images=None):
        umm = self.model(llm_engine)
        lay = umm.layout
        ids = umm.generation_prompt(prompt)
        params = deepcopy(sampling_params)
        params.max_tokens = lay.grid**2
        params.allowed_token_ids = list(range(lay.image_offset, lay.image_offset + lay.num_codes))
        params.min_p, params.top_k = self.cfg.min_p, self.cfg.top_k or -1
        out = await llm_engine.generate(ids, params)
        tokens = list(out.outputs[0].token_ids)
        codes = torch.tensor(tokens) - lay.image_offset

        # The exact codebook render is what the evaluator logs read (the head reproduces it: round-trip 1.0); the
        # diffusion head runs only for `reencode`, the authors' decode-then-re-tokenize judge input.
        pixels = umm.vq.decode(codes[None])
        if self.cfg.reencode:
            with torch.no_grad():
                judged = umm.vq.encode(render_codes(umm.head, umm.scheduler, codes[None], 4, self.generator))[0]
        else:
            judged = codes
        context = umm.chat(judged, DESCRIBE)
        target = umm.ids(prompt) + ([umm.tokenizer.eos_token_id] if self.cfg.include_eos else [])
        score_params = type(sampling_params)(max_tokens=1, temperature=1.0, prompt_logprobs=0)
        kw = {} if self.cfg.judge == "policy" else {"use_adapter": False}
        scored = await llm_engine.generate(context + target, score_params, **kw)
        logps = [d[t].logprob for d, t in zip(scored.prompt_logprobs[len(context) :], target)]
        reward = math.exp(sum(logps) / len(logps))
        if not math.isfinite(reward):
            raise ValueError(f"GvU reward is {reward} for prompt {prompt!r}: the judge produced non-finite log-probs")

        logs = {"gvu_reward": reward}
        try:  # ShapesWorld prompts: log what the exact evaluator sees (hacking indicators), never reward with it
            meta = parse_prompt(prompt).meta()
            objects = len(detect(pixels[0]).objects)
            logs |= {
                "shapes_accuracy": float(evaluate(pixels[0], meta)[0]),
                "objects_per_image": float(objects),
                "extra_objects": float(objects > sum(r["count"] for r in meta["include"])),
            }
        except PromptError:
            pass
        if hasattr(llm_engine, "record"):
            llm_engine.record(logs)
        return {
            "prompt": prompt,
            "label": label,
            "images": images,
            "mm_train_inputs": None,
            "observation_tokens": ids + tokens,
            "action_ranges": [(len(ids), len(ids) + len(tokens))],
            "rollout_log_probs": None,
            "truncated": False,
            "reward": reward,
            "scores": reward,
            "extra_logs": {k: float(np.float32(v)) for k, v in logs.items()},
        }

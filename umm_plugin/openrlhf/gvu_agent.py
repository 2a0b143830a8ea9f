"""GvU's rollout + intrinsic reward as an OpenRLHF executor: pass this file's path to `--train.agent_func_path`.

For one prompt sample: generate the image tokens (logits limited to the image vocabulary), optionally decode them
with the diffusion head and re-tokenize (`--gvu.reencode`, the authors' way), then score r = exp(mean log p(prompt
[+ end token] | <image> describe the image .)) with one teacher-forced `generate(..., prompt_logprobs=0)` call on
the same engine. `--umm.judge.weights reference` scores with the LoRA-free weights (on the UMM engine: the same
weights, adapter disabled). The ShapesWorld evaluator's verdict is logged beside the reward, never used as reward.

On a Janus model (the UMM engine only) the codes are decoded to pixels and the prompt scored given the pixels through
the engine's `text_logprobs` (Janus understands through its SigLIP encoder, not its VQ codes).

Runs unchanged on vLLM's RolloutRayActor for the generate calls (the backbone is a stock Qwen2); there it loads its
own copy of the small non-backbone parts (visual tokenizer, diffusion head) from the model directory, and
judge=reference needs the engine to serve the base weights (not implemented for vLLM yet).
"""

import math

import torch

from umm_plugin.models.diffusion_head import render_codes
from umm_plugin.models.umm import DESCRIBE, UMM
from umm_plugin.openrlhf.executor import UMMExecutor


class AgentExecutor(UMMExecutor):
    async def execute(self, prompt, label, sampling_params, max_length, hf_tokenizer, llm_engine, images=None):
        umm = self.model(llm_engine)
        ids = umm.generation_prompt(prompt)
        tokens, codes = await self.generate_codes(llm_engine, sampling_params, ids)
        if isinstance(umm, UMM):
            pixels, logps = await self.score_codes(umm, llm_engine, sampling_params, prompt, codes)
        else:
            # A model that understands pixels (Janus: SigLIP) is judged on the decoded image, as the GvU authors
            # re-tokenise X-Omni's; the engine batches the G samples' decode and scoring into one pass.
            logps, pixels = await llm_engine.text_logprobs(codes, umm.describe, prompt, **self.judge_kw)
            logps = logps if self.config.gvu.include_eos else logps[:-1]
        reward = math.exp(sum(logps) / len(logps))
        if not math.isfinite(reward):
            raise ValueError(f"GvU reward is {reward} for prompt {prompt!r}: the judge produced non-finite log-probs")
        actions = [(len(ids), len(ids) + len(tokens))]
        logs = {"gvu_reward": reward}
        return self.response(llm_engine, prompt, label, images, ids + tokens, actions, pixels, reward, logs)

    async def score_codes(self, umm, llm_engine, sampling_params, prompt, codes):
        """ShapesWorld: (the codebook render, log p of each prompt token [and the end token] given the codes)."""
        # The exact codebook render is what the evaluator logs read (the head reproduces it: round-trip 1.0); the
        # diffusion head runs only for `reencode`, the authors' decode-then-re-tokenize judge input.
        pixels = umm.vq.decode(codes[None])
        if self.config.gvu.reencode:
            with torch.no_grad():
                judged = umm.vq.encode(render_codes(umm.head, umm.scheduler, codes[None], 4, self.rng()[0]))[0]
        else:
            judged = codes
        context = umm.chat(judged, DESCRIBE)
        target = umm.ids(prompt) + ([umm.tokenizer.eos_token_id] if self.config.gvu.include_eos else [])
        score_params = type(sampling_params)(max_tokens=1, temperature=1.0, prompt_logprobs=0)
        scored = await llm_engine.generate(context + target, score_params, **self.judge_kw)
        return pixels[0], [d[t].logprob for d, t in zip(scored.prompt_logprobs[len(context) :], target)]

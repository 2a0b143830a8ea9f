"""What every UMM executor (the `--train.agent_func_path` files) shares: the model the engine serves, image-token
and text-turn generation through the engine's vLLM-shaped `generate`, and the finished OpenRLHF response with the
ShapesWorld evaluator's verdict logged beside the recipe's own reward (logged, never rewarded with)."""

from copy import deepcopy

import numpy as np
import torch
from openrlhf.utils.agent import AgentExecutorBase

from umm_plugin.algos.flow_grpo import R3_A, sde_render, shared_group_draws
from umm_plugin.models.diffusion_head import from_pixels
from umm_plugin.models.umm import UMM
from umm_plugin.openrlhf.config import plugin_config
from umm_plugin.worlds.evaluator import detect, evaluate
from umm_plugin.worlds.grammar import PromptError, parse_prompt


class UMMExecutor(AgentExecutorBase):
    def __init__(self):
        self.config = plugin_config()  # every flag group; `cfg` the run-wide one
        self.cfg = self.config.umm
        # generate() keyword that picks the judge's weights (--umm.judge.weights): the policy, or the reference.
        self.judge_kw = {} if self.cfg.judge.weights == "policy" else {"use_adapter": False}
        self.umm = None
        self.generator = torch.Generator().manual_seed(0)
        self.draws, self.draws_sync = {}, None  # --umm.head.rl: id(sampling params) -> (params, t_index, noise)

    def rng(self) -> tuple[torch.Generator, torch.Generator]:
        """(the running sample's generator, a fresh generator of its group: every member draws the same from it).
        In the UMM engine both are seeded by the run's seed, the step, the prompt and the sample (`engine.
        rollout_rng`), so a sample's draws do not depend on which engine serves it; elsewhere both are the
        executor's own generator (a group then shares the draw of its first member, `render`)."""
        from umm_plugin.openrlhf.engine import rollout_rng

        own = rollout_rng()
        if own is None:
            return self.generator, self.generator
        return own[0], torch.Generator().manual_seed(own[1])

    def model(self, llm_engine):
        """The engine's own model (our engine: a UMM or a Janus model), or the small non-backbone parts of a UMM
        loaded next to vLLM's backbone."""
        if self.umm is None:
            self.umm = getattr(llm_engine, "umm", None) or UMM.from_pretrained(llm_engine.kwargs["model"])
        return self.umm

    async def generate_codes(
        self, llm_engine, sampling_params, ids: list[int], images=()
    ) -> tuple[list[int], torch.Tensor]:
        """One image after `ids`, sampled with the run's top-k/min-p: its token ids and its codes. ShapesWorld's
        image is rows of codes, each ended by <EOL>. Every <EOL> is fed, never sampled: pretraining keeps them out
        of the loss, so the model cannot write them. Our engine feeds them inside one call; on vLLM each row is one
        call over the image vocabulary, the prompt growing by that row and its <EOL> (prefix caching keeps the
        re-read cheap). `images` (another model): the pixels its understanding placeholders in `ids` show."""
        umm = self.model(llm_engine)
        params = deepcopy(sampling_params)
        params.min_p, params.top_k = self.cfg.sampling.min_p, self.cfg.sampling.top_k or -1
        if not isinstance(umm, UMM):  # another model of the interface (Janus): no <EOL>, token = image_offset + code
            params.max_tokens, params.allowed_token_ids = umm.image_tokens, umm.image_ids
            mm = {"multi_modal_data": {"image": list(images)}} if len(images) else {}
            tokens = list((await llm_engine.generate(ids, params, **mm)).outputs[0].token_ids)
            return tokens, torch.tensor(tokens) - umm.image_offset
        lay = umm.layout
        if getattr(llm_engine, "umm", None) is not None:
            params.max_tokens, params.allowed_token_ids = lay.length, lay.code_ids + [lay.eol]
            tokens = list((await llm_engine.generate(ids, params)).outputs[0].token_ids)
            return tokens, lay.codes(tokens)
        params.max_tokens, params.allowed_token_ids = lay.grid, lay.code_ids
        tokens = []
        for _ in range(lay.grid):
            tokens += list((await llm_engine.generate(ids + tokens, params)).outputs[0].token_ids) + [lay.eol]
            if getattr(params, "seed", None) is not None:  # a seeded request must not redraw one row's noise
                params.seed += 1
        return tokens, lay.codes(tokens)

    async def generate_text(
        self, llm_engine, sampling_params, ids: list[int], max_tokens: int, stop=(), stop_strings=(), images=()
    ) -> list[int]:
        """A text turn after `ids` (the text vocabulary only), ending at EOS, a `stop` token or once its text ends
        with one of `stop_strings` (vLLM's `stop`), which it keeps. `images` as in `generate_codes`."""
        umm = self.model(llm_engine)
        params = deepcopy(sampling_params)
        params.max_tokens, params.stop_token_ids = max_tokens, list(stop)
        # Another model's engine samples text from its text vocabulary whatever the token set; ShapesWorld's names it.
        params.allowed_token_ids = list(range(umm.layout.image_offset)) if isinstance(umm, UMM) else None
        if stop_strings:
            params.stop, params.include_stop_str_in_output = list(stop_strings), True
        mm = {"multi_modal_data": {"image": list(images)}} if len(images) else {}
        out = await llm_engine.generate(ids, params, **mm)
        return list(out.outputs[0].token_ids)

    def render(self, llm_engine, sampling_params, codes: torch.Tensor, edit: bool = False):
        """(pixels [H, W, 3], mm_train_inputs) of one image's codes: the codebook render (the head reproduces it) and
        None, or with --umm.head.rl the head's render with Flow-GRPO's one SDE step and what the actor's head
        policy scores again. The members of a group (one sampling-params object) share the initial noise and the
        SDE step index, drawn from the first steps but the last (R3: a = 0.7 generating, 1.0 editing)."""
        umm = self.model(llm_engine)
        if not self.cfg.head.rl:
            return umm.vq.decode(codes[None])[0], None
        sync = getattr(llm_engine, "syncs", None)
        if sync != self.draws_sync:  # a new step: its groups draw afresh
            self.draws, self.draws_sync = {}, sync
        head, steps = umm.head, self.cfg.head.steps
        key = (id(sampling_params), edit)
        if key not in self.draws:
            size = head.config.grid * head.config.patch
            high = min(1, steps - 2) if edit else steps - 2  # R3's windows; never the last step
            t_index, noise = shared_group_draws(1, 1, (3, size, size), 0, high, self.rng()[1])
            self.draws[key] = (sampling_params, t_index, noise)
        _, t_index, noise = self.draws[key]
        a = R3_A["editing" if edit else "generation"]
        umm.scheduler.set_timesteps(steps)
        x0, x_t, x_next, logp = sde_render(
            lambda x, sigma: head(x, sigma, codes[None]),
            umm.scheduler,
            noise,
            t_index,
            self.cfg.head.eta_form,
            a,
            self.rng()[0],
        )
        record = {"head_x_t": x_t, "head_x_next": x_next, "head_t_index": t_index, "head_a": torch.tensor([a])}
        record.update(head_logp=logp, head_codes=codes[None].long())
        return from_pixels(x0)[0], record

    def response(self, llm_engine, prompt, label, images, observation, actions, pixels, reward, logs: dict, **extra):
        """The executor's answer to OpenRLHF: the observation tokens, the (start, end) action ranges in them (what the
        policy generated), the reward, and the logs."""
        try:  # ShapesWorld prompts: log what the exact evaluator sees (hacking indicators)
            meta = parse_prompt(prompt).meta()
            objects = len(detect(pixels).objects)
            logs |= {
                "shapes_accuracy": float(evaluate(pixels, meta)[0]),
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
            "observation_tokens": observation,
            "action_ranges": actions,
            "rollout_log_probs": None,
            "truncated": False,
            "reward": reward,
            "scores": reward,
            "extra_logs": {k: float(np.float32(v)) for k, v in logs.items()},
            **extra,
        }

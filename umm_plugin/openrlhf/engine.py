"""A rollout engine for OpenRLHF that serves a unified model (ShapesWorld's on CPU, Janus on CPU or a GPU):
`--rollout.engine umm_plugin.openrlhf.engine:create_engines` (patches/0003).

It is a Ray actor answering the calls OpenRLHF and rollout executors make on vLLM's RolloutRayActor: `generate`
(token ids + SamplingParams -> a vLLM-shaped RequestOutput, with `prompt_logprobs` and `allowed_token_ids`),
`generate_responses` (runs the `--train.agent_func_path` executor), weight updates broadcast by the actor after each
step (`init_process_group` / `update_weight`, gloo), and no-op sleep/wake/prefix-cache calls. Concurrent `generate`
calls (the G samples of every prompt in flight) are gathered into one batch: image-token requests run through the
KV-cache generator, scoring requests (prompt_logprobs) through one teacher-forced pass.

Rollouts are reproducible: a step's executors start together once the step's prompts have arrived (this engine's share
of `--rollout.batch_size`), in the order of (prompt, label), and a batch runs once every running executor waits on
the engine, its rows in that order; so what each sample draws does not depend on timing. Every `--ckpt.save_steps`
weight syncs it saves its state (sync count, random generators, the executor's state, unlogged rollout stats) beside
OpenRLHF's checkpoint, and with `--ckpt.load_enable` it restores the state of the checkpoint OpenRLHF resumes from.

Differences from vLLM: it serves image-token generation (allowed_token_ids = the image vocabulary and <EOL>, max_tokens
= the image's token count; it feeds each row's <EOL> rather than sampling it), text generation (allowed_token_ids
unset or any set of text tokens; EOS and stop_token_ids end it) and scoring only; `generate(..., use_adapter=False)`
runs the LoRA-free reference weights: with LoRA the adapter switched off (no second copy of the backbone), fully
fine-tuned one frozen copy. Every `--umm.eval.steps` weight syncs it evaluates its current weights (= the actor's) on
held-out ShapesWorld prompts (plus the executor's own `evaluate`, if it has one) and saves them as a complete UMM
directory.

A Janus directory (`models/janus.py`) is served the same way for image tokens (token id = image_offset + code, the
actor's RL view) and text turns (its text vocabulary, stop strings as vLLM's `stop`), both taking the pictures their
understanding placeholders show as `multi_modal_data={"image": [...]}` (R3's reflect and refine turns), plus three
more calls, batched like `generate`: `text_logprobs` (decode codes, score a text given the pixels: GvU's judge),
`decode` and `yes_no` (SRUM's and R3's judges); its evaluation is `eval.evaluate_geneval` on the run's eval (else
training) prompts, and its `policy/` a Janus checkpoint.
"""

import asyncio
import contextlib
import contextvars
import copy
import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from umm_plugin.models.generation import SamplingConfig, generate_image_tokens, generate_text, left_pad
from umm_plugin.models.interface import load_model
from umm_plugin.models.umm import UMM, save_atomically, torch_save_atomically

START_WAIT_S = 0.5  # how long a step's first prompts wait for the rest of the step's share (then start anyway)
GRID = 8  # the first eval prompts, drawn at every evaluation
_OWNER = contextvars.ContextVar("umm_executor", default=None)  # the running executor's (prompt key, rank, sample)
_RNG = contextvars.ContextVar("umm_rollout_rng", default=None)  # its (own generator, its group's seed)


def _seed(*parts) -> int:
    """A 63-bit seed from `parts`, the same in every process (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


def current_sample():
    """For an executor the UMM engine runs: (its prompt's key, the prompt's rank among equal ones, the sample's index);
    else None."""
    return _OWNER.get()


def rollout_rng():
    """For an executor the UMM engine runs: (a generator of the sample's own, the seed of its group); else None.
    Seeded by the run's seed, the step, the prompt and the sample's index, so what a sample draws does not depend on
    which engine serves it or what else is in flight."""
    return _RNG.get()


@dataclass
class Logprob:
    logprob: float


@dataclass
class Completion:
    token_ids: list
    text: str = ""
    finish_reason: str = "length"
    logprobs: list | None = None


@dataclass
class RequestOutput:
    prompt_token_ids: list
    outputs: list
    prompt_logprobs: list | None = None


@dataclass
class _Request:
    kind: str  # score, image, text; understand (ids: codes, params: (instruction, text)), decode, yes_no (pixels)
    ids: list
    params: object
    use_adapter: bool
    future: asyncio.Future = field(repr=False)
    images: list = field(default_factory=list)  # a model of the interface: the images its placeholders show
    order: tuple = ()  # where the request sits in its batch: its executor's key and request count
    generator: torch.Generator | None = None  # an executor's request: its own (seeded by sample and count)


def _lora_config(args):
    from peft import LoraConfig, TaskType

    lora = args.ds.lora
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora.rank,
        lora_alpha=lora.alpha,
        target_modules=lora.target_modules,
        lora_dropout=lora.dropout,
        bias="none",
    )


class UMMRolloutEngine:
    def __init__(
        self,
        model_dir,
        seed,
        agent_func_path,
        lora=None,
        log_dir=None,
        index=0,
        temperature=1.0,
        eval_prompts=None,
        prompt_files=(),
        share=0,
        ckpt=None,
        device="cpu",
        dtype=None,
        store=None,
    ):
        """`share`: prompts this engine serves per step (0: start each call at once); `ckpt`: OpenRLHF's checkpoint
        settings {"path", "save_steps", "max_num", "load"} (None: never save or restore); `device` and `dtype`: where
        and in what a model of the interface runs (ShapesWorld's runs on CPU as saved); `store`: the `GroupStore`
        the engines exchange executor groups through (None: one engine)."""
        from umm_plugin.openrlhf.config import plugin_config

        config = plugin_config()
        self.cfg, self.include_eos = config.umm, config.gvu.include_eos  # evaluation logs the GvU reward too
        # The rollout sampler (--rollout.temperature with --umm.sampling.*) is also what evaluation uses.
        self.sampling = dataclasses.replace(self.cfg.sampling, temperature=temperature)
        self.kwargs = {"model": model_dir}  # what executors read on vLLM's actor too
        self.umm = load_model(model_dir, device, dtype)
        self.shapes, self.device = isinstance(self.umm, UMM), torch.device(device)
        self.peft = None  # LoRA injects its layers in place; the wrapper names the weights and switches them off
        if lora is not None:
            from peft import get_peft_model

            self.peft = get_peft_model(self.umm.backbone, lora).eval()
            if self.shapes:  # its generation functions call the backbone itself
                self.umm.backbone = self.peft
        # Full fine-tuning has no adapter to switch off, so judge=reference there keeps one frozen copy of the
        # backbone (the only case with a second copy; with LoRA the reference is the same weights, adapter off).
        self.reference = None
        if lora is None and self.cfg.judge.weights == "reference":
            self.reference = copy.deepcopy(self.umm.backbone).eval().requires_grad_(False)
        self.params = dict((self.peft or self.umm.backbone).named_parameters())
        if self.shapes:  # the actor syncs its diffusion-head policy (--umm.head.rl) under the extension's name
            self.params |= {f"umm_head.{n}": p for n, p in self.umm.head.named_parameters()}
        self.eval_metas, self.prompt_meta = [], {}
        if not self.shapes:  # GenEval lines by prompt: what executors judge against (the label holds only the tag)
            from umm_plugin.worlds.geneval import load_geneval

            for path in prompt_files or ():
                self.prompt_meta |= {m["prompt"]: m for m in load_geneval(path)}
            if eval_prompts and self.cfg.eval.steps:
                self.eval_metas = load_geneval(eval_prompts)[: self.cfg.eval.n]
        self.seed = seed  # executors' requests draw from generators seeded by it, the step, the prompt and sample
        self.generator = torch.Generator(self.device).manual_seed(seed + index)  # calls from outside executors
        self.executor = None
        if agent_func_path:
            from openrlhf.trainer.ray.vllm_engine import _load_agent_executor

            self.executor = _load_agent_executor(agent_func_path)
        self.pending: list[_Request] = []
        self.flushing = False
        self.share, self.index, self.store = share, index, store
        self.calls = []  # generate_responses calls waiting to start: (key, samples, start future)
        self.started, self.ranks, self.requests, self.live = 0, {}, {}, 0
        self.start_timer = None
        self.group = None
        self.syncs = 0
        self.log_dir = Path(log_dir) if log_dir else None
        self.records: list[dict] = []  # per-rollout stats the executor reports, flushed into the curve
        self.ckpt, self.resync = ckpt or {}, False
        latest = Path(self.ckpt.get("path", ".")) / "_actor" / "latest"
        if self.ckpt.get("load") and latest.is_file():
            self.restore(latest.read_text().strip())
        elif self.log_dir is not None and index == 0 and self.cfg.eval.steps:
            self.evaluate_and_save()

    # ---- generation ----
    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None, use_adapter=True):
        """vLLM's call. A model of the interface also takes `multi_modal_data={"image": [uint8 [H, W, 3], ...]}`, the
        images its understanding placeholders in `prompt_token_ids` show, in order (R3's reflect and refine turns)."""
        images = list((multi_modal_data or {}).get("image", []))
        if multi_modal_data and (self.shapes or set(multi_modal_data) != {"image"}):
            raise ValueError(
                "the UMM engine takes a ShapesWorld model's images as tokens in the prompt, and another model's as "
                "multi_modal_data={'image': [pixels]}"
            )
        kind = self._kind(sampling_params)
        return await self._submit(kind, list(prompt_token_ids), sampling_params, use_adapter, images)

    async def text_logprobs(self, codes, instruction: str, text: str, use_adapter=True):
        """Understanding of one generated image (a model of the interface other than ShapesWorld's): decode `codes`,
        then log p(text_j | pixels, instruction, text_<j) per token, the end token last. Returns (log-probs, pixels
        [H, W, 3]). Concurrent calls run as one batch."""
        if self.shapes:
            raise ValueError("the ShapesWorld model is judged through generate(..., prompt_logprobs=0)")
        return await self._submit("understand", [int(c) for c in codes], (instruction, text), use_adapter)

    async def decode(self, codes) -> np.ndarray:
        """Pixels [H, W, 3] of one image's codes (a model of the interface); concurrent calls run as one batch."""
        return await self._submit("decode", [int(c) for c in codes], "", True)

    async def yes_no(self, pixels: np.ndarray, question: str, use_adapter=True) -> float:
        """p(yes) - p(no) of the model's answer to `question` about `pixels` [H, W, 3]; batched like `generate`."""
        return await self._submit("yes_no", pixels, question, use_adapter)

    async def _submit(self, kind, ids, params, use_adapter, images=()):
        loop = asyncio.get_running_loop()
        owner = _OWNER.get()
        count = self.requests[owner] = self.requests.get(owner, -1) + 1
        order = (0, owner, count) if owner is not None else (1, count)  # calls from outside executors go last
        req = _Request(kind, ids, params, use_adapter, loop.create_future(), list(images), order)
        if owner is not None:
            req.generator = torch.Generator(self.device).manual_seed(_seed(self.seed, self.syncs, owner, count))
        self.pending.append(req)
        self._kick()
        return await req.future

    def _kick(self):
        if self.pending and not self.flushing:
            self.flushing = True
            asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self):
        """Run the pending requests as one batch once every running executor waits on the engine (one at a time)."""
        n = -1
        while n != len(self.pending):  # let every runnable executor reach its next request (or its end)
            n = len(self.pending)
            await asyncio.sleep(0)
        batch = []
        # Otherwise an executor is still working or awaits something else: its next request (or its end) kicks.
        if len({r.order[1] for r in self.pending if r.order[0] == 0}) >= self.live:
            batch, self.pending = sorted(self.pending, key=lambda r: r.order), []
            try:
                for r, out in zip(batch, await asyncio.to_thread(self._run, batch)):
                    r.future.set_result(out)
            except Exception as e:  # every waiting executor sees the error, not a hang
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
        self.flushing = False
        if batch:
            self._kick()  # requests that came while the batch ran

    @contextlib.contextmanager
    def _adapter(self, on: bool):
        """on: the current weights; off: the reference (LoRA disabled, or the frozen copy when fully fine-tuned)."""
        if on:
            yield
        elif self.reference is not None:
            live, self.umm.backbone = self.umm.backbone, self.reference
            try:
                yield
            finally:
                self.umm.backbone = live
        elif self.peft is not None:
            with self.peft.disable_adapter():
                yield
        else:
            raise ValueError("the reference weights were asked for, but the engine has no LoRA and no frozen copy")

    def _kind(self, params) -> str:
        """score (prompt_logprobs), image (the image vocabulary, one grid of codes) or text (the text vocabulary)."""
        allowed = list(params.allowed_token_ids or [])
        if getattr(params, "logprobs", None) is not None:
            raise ValueError("the UMM engine does not return sampled-token logprobs; leave logprobs unset")
        if not self.shapes:
            if allowed == self.umm.image_ids and params.max_tokens == self.umm.image_tokens:
                return "image"
            whole = not allowed or allowed == list(range(self.umm.image_offset))
            if whole and params.max_tokens and getattr(params, "prompt_logprobs", None) is None:
                return "text"
            raise ValueError(
                f"the engine serves a {type(self.umm).__name__}'s image tokens (allowed_token_ids = its image ids "
                f"{self.umm.image_offset} .. {self.umm.image_ids[-1]}, max_tokens = {self.umm.image_tokens}), text "
                "(allowed_token_ids unset or the whole text vocabulary) and text_logprobs, decode and yes_no"
            )
        lay = self.umm.layout
        if getattr(params, "prompt_logprobs", None) is not None:
            return "score"
        if allowed == lay.code_ids + [lay.eol] and params.max_tokens == lay.length:
            return "image"
        if all(0 <= t < lay.image_offset for t in allowed) and params.max_tokens:
            return "text"
        raise ValueError(
            "the UMM engine serves image-token generation (allowed_token_ids = the image vocabulary + <EOL>, "
            f"max_tokens = {lay.length}), text generation (allowed_token_ids unset or text tokens, ids < "
            f"{lay.image_offset}) and scoring (prompt_logprobs) only"
        )

    @torch.no_grad()
    def _run(self, batch: list[_Request]) -> list[RequestOutput]:
        out = [None] * len(batch)
        groups = {}
        pad = self.umm.tokenizer.pad_token_id
        for i, r in enumerate(batch):
            p, kind = r.params, r.kind
            if kind in ("understand", "decode", "yes_no"):  # a model of the interface; one batch per instruction
                groups.setdefault((kind, r.use_adapter, 0, 0, 0, p[0] if kind == "understand" else ""), []).append(i)
                continue
            # Requests batch together when they sample alike; text turns also need the same stops, length and token
            # set. The whole text vocabulary (the usual set) is a cut of the logits, not a gather of every column.
            allowed = tuple(p.allowed_token_ids or ())
            if kind == "text" and not self.shapes:  # the whole text vocabulary, and stop strings (vLLM's `stop`)
                allowed = tuple(getattr(p, "stop", None) or ())
            elif kind == "text" and len(set(allowed)) == self.umm.layout.image_offset:
                allowed = "text"
            text = (tuple(p.stop_token_ids or ()), p.max_tokens, allowed) if kind == "text" else ()
            key = (kind, r.use_adapter, p.temperature, getattr(p, "top_k", -1), getattr(p, "min_p", 0.0), text)
            groups.setdefault(key, []).append(i)
        for (kind, adapter, temperature, top_k, min_p, text), idx in groups.items():
            gens = [batch[i].generator or self.generator for i in idx]  # one per row
            with self._adapter(adapter):
                if kind == "understand":
                    pixels = self.umm.decode(torch.tensor([batch[i].ids for i in idx]))
                    logp, mask = self.umm.text_logprobs(pixels, text, [batch[i].params[1] for i in idx])
                    for k, i in enumerate(idx):
                        out[i] = (logp[k][mask[k]].tolist(), pixels[k])
                elif kind == "decode":
                    for i, pixels in zip(idx, self.umm.decode(torch.tensor([batch[i].ids for i in idx]))):
                        out[i] = pixels
                elif kind == "yes_no":
                    images = np.stack([batch[i].ids for i in idx])
                    for i, v in zip(idx, self.umm.yes_no(images, [batch[i].params for i in idx]).tolist()):
                        out[i] = v
                elif kind == "score":
                    for i, res in zip(idx, self._score([batch[i] for i in idx])):
                        out[i] = res
                elif not self.shapes and kind == "text":  # a model of the interface: the text vocabulary
                    stops, max_tokens, stop_strings = text
                    rows, pixels = [batch[i].ids for i in idx], self._pixels([batch[i] for i in idx])
                    ids, mask = left_pad(rows, pad)
                    texts = self.umm.sample_text(
                        ids, mask, pixels, max_tokens, temperature, gens, stop_strings, set(stops)
                    )
                    for i, row in zip(idx, texts):
                        reason = "stop" if len(row) < max_tokens or row[-1:] == [self.umm.eos_id] else "length"
                        out[i] = RequestOutput(batch[i].ids, [Completion(row, finish_reason=reason)])
                elif kind == "text":  # vLLM stops at EOS and at stop_token_ids, and keeps the stop token
                    lay = self.umm.layout
                    stops, max_tokens, allowed = text
                    stop = {*stops, self.umm.tokenizer.eos_token_id}
                    vocab, allowed = (lay.image_offset, None) if allowed == "text" else (None, allowed or None)
                    rows = [batch[i].ids for i in idx]
                    texts = generate_text(
                        self.umm.backbone, rows, max_tokens, stop, vocab, temperature, gens, pad, allowed
                    )
                    for i, row in zip(idx, texts):
                        reason = "stop" if row and row[-1] in stop else "length"
                        out[i] = RequestOutput(batch[i].ids, [Completion(row, finish_reason=reason)])
                elif not self.shapes:  # image tokens of a model of the interface: token id = image_offset + code
                    sampling = SamplingConfig(temperature, max(0, top_k), min_p)
                    rows, pixels = [batch[i].ids for i in idx], self._pixels([batch[i] for i in idx])
                    codes = self.umm.sample_rows(rows, sampling, gens, pixel_values=pixels)
                    for i, row in zip(idx, codes):
                        tokens = (row + self.umm.image_offset).tolist()
                        out[i] = RequestOutput(batch[i].ids, [Completion(tokens)])
                else:
                    lay = self.umm.layout
                    sampling = SamplingConfig(temperature, max(0, top_k), min_p)
                    rows = [batch[i].ids for i in idx]
                    codes = generate_image_tokens(
                        self.umm.backbone, lay, rows, sampling=sampling, generator=gens, pad_id=pad
                    )
                    for i, row in zip(idx, codes):
                        out[i] = RequestOutput(batch[i].ids, [Completion(lay.tokens(row))])
        return out

    def _pixels(self, reqs):
        """The understanding encoder's input for the images of `reqs`, in order (None when they show none)."""
        images = [im for r in reqs for im in r.images]
        return self.umm.pixel_values(np.stack(images)) if images else None

    def _score(self, reqs) -> list[RequestOutput]:
        """vLLM's prompt_logprobs: entry j holds log p(ids[j] | ids[<j]) (None for j = 0); one pass, right-padded."""
        backbone, pad = self.umm.backbone, self.umm.tokenizer.pad_token_id
        n = max(len(r.ids) for r in reqs)
        ids = torch.full((len(reqs), n), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, r in enumerate(reqs):
            ids[i, : len(r.ids)], attn[i, : len(r.ids)] = torch.tensor(r.ids), 1
        logits = backbone(input_ids=ids, attention_mask=attn).logits.float()
        logp = F.log_softmax(logits, -1)
        taken = logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
        out = []
        for i, r in enumerate(reqs):
            prompt_lp = [None] + [{t: Logprob(v)} for t, v in zip(r.ids[1:], taken[i, : len(r.ids) - 1].tolist())]
            nxt = int(logits[i, len(r.ids) - 1].argmax())
            out.append(RequestOutput(r.ids, [Completion([nxt])], prompt_lp))
        return out

    async def generate_responses(
        self, prompt, label, sampling_params, max_length, hf_tokenizer, num_samples=1, images=None
    ):
        key = (str(prompt), repr(label))
        start = asyncio.get_running_loop().create_future()
        self.calls.append((key, num_samples, start))
        self._start_calls(force=False)
        rank = await start

        async def one(sample):
            _OWNER.set((key, rank, sample))  # this task's own context: the requests it makes carry it
            own = torch.Generator().manual_seed(_seed(self.seed, self.syncs, key, rank, sample, "executor"))
            _RNG.set((own, _seed(self.seed, self.syncs, key, rank, "group")))
            try:
                out = await self.executor.execute(
                    prompt=prompt,
                    label=label,
                    sampling_params=sampling_params,
                    max_length=max_length,
                    hf_tokenizer=hf_tokenizer,
                    llm_engine=self,
                    images=images,
                )
                if len(out["observation_tokens"]) > max_length:  # OpenRLHF would cut it, and its actions with it
                    raise ValueError(
                        f"a rollout of {len(out['observation_tokens'])} tokens is longer than --data.max_len "
                        f"{max_length}: raise --data.max_len (in a recipe: -- --data.max_len N)"
                    )
                return out
            finally:
                self.live -= 1
                self._kick()

        return await asyncio.gather(*[one(i) for i in range(num_samples)])

    def _start_calls(self, force: bool):
        """Start the waiting calls, in (prompt, label) order, once the step's share has arrived (or on `force`)."""
        if self.start_timer is not None:
            self.start_timer.cancel()
            self.start_timer = None
        if not self.calls:
            return
        if not force and len(self.calls) < self.share - self.started:
            self.start_timer = asyncio.get_running_loop().call_later(START_WAIT_S, self._start_calls, True)
            return
        calls, self.calls = sorted(self.calls, key=lambda c: c[0]), []
        self.started += len(calls)
        for key, samples, start in calls:
            self.live += samples  # counted now, so that no batch runs before these executors reach the engine
            rank = self.ranks[key] = self.ranks.get(key, -1) + 1  # repeated prompts: in arrival order
            start.set_result(rank)

    async def exchange(self, groups: list) -> list:
        """Every engine's share of this step's executor groups, the same list on every engine: R3's stage-1 groups
        (prompt, V, states, order), sorted by order (prompt key and rank), so what stage 2 draws from them does not
        depend on how the prompts were spread over engines."""
        if self.store is not None:
            self.store.put.remote(self.syncs, self.index, groups)
            groups = await self.store.get.remote(self.syncs)
        return sorted(groups, key=lambda g: g[3])

    def get_num_unfinished_requests(self) -> int:
        return len(self.pending)

    def record(self, stats: dict) -> None:
        if self.index == 0:  # the curve's train_* columns: engine 0's share of the rollouts
            self.records.append(stats)

    # ---- weights from the actor ----
    def init_process_group(self, master_address, master_port, rank_offset, world_size, group_name, backend, use_ray):
        from openrlhf.utils.distributed_util import stateless_init_process_group

        if backend != "gloo" or use_ray:
            raise ValueError("the UMM engine syncs weights over gloo: pass --vllm.sync_backend gloo")
        self.group = stateless_init_process_group(master_address, master_port, rank_offset, world_size, "cpu", backend)

    def update_weight(self, name, dtype, shape, empty_cache=False):
        """One weight from actor rank 0, received in host memory over gloo (whatever device either side computes
        on), then copied into the engine's weight (cast to its dtype)."""
        if name not in self.params:
            raise KeyError(f"weight {name!r} from the actor has no counterpart in the engine (LoRA settings differ?)")
        weight = torch.empty(shape, dtype=dtype)
        self.group.broadcast(weight, src=0)
        with torch.no_grad():
            self.params[name].copy_(weight)
        if empty_cache:  # OpenRLHF flags the last weight of a sync
            self.step_done()

    def step_done(self):
        """A weight sync ended, and with it a step: count it, evaluate and checkpoint on schedule."""
        self.started, self.ranks, self.requests = 0, {}, {}
        if self.resync:  # the resumed actor's weights, sent again: not a step, but the checkpoint's weights
            self.resync = False
            if self.weights_digest() != self.resync_digest:
                raise RuntimeError(
                    f"the weights the resumed actor sent differ from those this engine held at step {self.syncs}: "
                    "the actor and engine checkpoints are of different runs"
                )
            return
        self.syncs += 1
        evaluates = self.log_dir is not None and self.index == 0 and self.cfg.eval.steps  # once, on engine 0
        if evaluates and self.syncs % self.cfg.eval.steps == 0:
            self.evaluate_and_save()
        save_steps = self.ckpt.get("save_steps", -1)
        if save_steps > 0 and self.syncs % save_steps == 0:
            self.save_state()

    async def reset_prefix_cache(self):
        pass

    async def sleep(self, level=1):
        pass

    async def wake_up(self, tags=None):
        pass

    async def pause_generation(self):
        pass

    async def resume_generation(self):
        pass

    # ---- checkpoints of the engine's own state ----
    def _state_path(self, tag: str) -> Path:
        return Path(self.ckpt["path"]) / "umm_engine" / f"{tag}_engine{self.index}.pt"

    def weights_digest(self) -> str:
        """A SHA-256 of every weight the actor syncs, in name order: equal digests, equal weights."""
        digest = hashlib.sha256()
        with torch.no_grad():
            for name in sorted(self.params):
                digest.update(name.encode())
                digest.update(self.params[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def save_state(self) -> None:
        """What a resumed run needs to go on as if never stopped, saved beside OpenRLHF's checkpoint of this step
        (written beside, fsynced, renamed); the oldest beyond `--ckpt.max_num` + 1 are removed."""
        state = {"syncs": self.syncs, "generator": self.generator.get_state(), "records": self.records}
        state["weights"] = self.weights_digest()
        state["executor"] = self.executor.state_dict() if hasattr(self.executor, "state_dict") else None
        path = self._state_path(f"global_step{self.syncs}")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch_save_atomically(state, path)
        saved = path.parent.glob(f"global_step*_engine{self.index}.pt")
        saved = sorted(saved, key=lambda p: int(p.name.removeprefix("global_step").split("_")[0]))
        for old in saved[: -(self.ckpt.get("max_num", 1) + 1)]:
            old.unlink()

    def restore(self, tag: str) -> None:
        """Load the state saved with OpenRLHF's checkpoint `tag` and cut the curve back to that step."""
        from umm_plugin.openrlhf.curves import truncate_curve

        path = self._state_path(tag)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: the checkpoint {tag} has no engine state to resume from (was it written by "
                "another version?); start the run again without resuming"
            )
        state = torch.load(path, weights_only=False)  # the plugin's own file (pickle): only resume trusted runs
        self.syncs, self.records, self.resync = state["syncs"], state["records"], True
        self.resync_digest = state["weights"]
        self.generator.set_state(state["generator"])
        if state["executor"] is not None:
            self.executor.load_state_dict(state["executor"])
        if self.log_dir is not None and self.index == 0:
            truncate_curve(self.log_dir, self.syncs)

    # ---- curves, grids and checkpoints ----
    def merged(self):
        """A copy of the current policy without LoRA layers (merged in), of the served model's class."""
        model = copy.copy(self.umm)
        if self.peft is not None:
            model.backbone = copy.deepcopy(self.peft).merge_and_unload()
        return model

    def evaluate_and_save(self) -> dict:
        """Evaluate the current policy, log a curve row and a grid, and save it as `policy/` (written beside, then
        renamed). ShapesWorld: held-out accuracy by the exact evaluator and the GvU reward; another model: its own
        GvU reward and yes/no checks on GenEval-format prompts (self-judged, `eval.evaluate_geneval`)."""
        from umm_plugin.eval import evaluate_geneval, save_grid, shapes_rollout_stats
        from umm_plugin.openrlhf.curves import append_curve
        from umm_plugin.worlds.grammar import make_prompts

        t0 = time.time()
        model = self.merged()
        if self.shapes:
            with self._adapter(self.cfg.judge.weights == "policy"):
                stats, images = shapes_rollout_stats(
                    model, self.cfg.eval.n, self.include_eos, self.umm.backbone, sampling=self.sampling
                )
            row = {"step": self.syncs, **stats}
            caption = f"step {self.syncs}: held-out accuracy {stats['accuracy']:.3f}, reward {stats['reward']:.3f}"
            prompts = [m["prompt"] for m in make_prompts(GRID, "eval", 0)]  # the grid's prompts, in reading order
        else:
            report, images = evaluate_geneval(model, self.eval_metas, sampling=self.sampling, seed=0)
            row = {"step": self.syncs, "reward": report["by_tag"]["overall"]["gvu_reward"]}
            row |= {f"yes_no_pass_{tag}": v["yes_no_pass"] for tag, v in report["by_tag"].items()}
            caption = f"step {self.syncs}: self-judged reward {row['reward']:.3f}"
            caption += f", yes/no passed {row['yes_no_pass_overall']:.3f}"
            prompts = [m["prompt"] for m in self.eval_metas[:GRID]]
        if hasattr(self.executor, "evaluate"):  # a recipe's own evaluation (R3: accuracy after each round)
            row |= self.executor.evaluate(model, self.log_dir, self.syncs, self.sampling)
        for key in dict.fromkeys(k for r in self.records for k in r):  # R3's stages log different keys
            row[f"train_{key}"] = float(np.mean([r[key] for r in self.records if key in r]))
        self.records = []
        self.log_dir.mkdir(parents=True, exist_ok=True)
        save_grid(images[:GRID], caption, self.log_dir / f"grid_{self.syncs:05d}.png")
        (self.log_dir / "grid_prompts.txt").write_text("\n".join(prompts) + "\n")
        append_curve(self.log_dir, row)
        save_atomically(model, self.log_dir / "policy")  # never a half-written checkpoint, never none
        row["eval_seconds"] = round(time.time() - t0, 1)
        return row


class GroupStore:
    """A Ray actor the engines exchange executor groups through, by step: `get(step)` returns every engine's `put`
    for that step once all have put theirs (each engine serves at least one prompt per step: the driver checks)."""

    def __init__(self, engines: int, timeout_s: float = 1800.0):
        self.engines, self.timeout_s, self.steps, self.done = engines, timeout_s, {}, {}

    def _event(self, step) -> asyncio.Event:
        return self.done.setdefault(step, asyncio.Event())

    async def put(self, step: int, index: int, groups: list) -> None:
        self.steps.setdefault(step, {})[index] = groups
        for old in [k for k in self.steps if k < step - 2]:  # a resumed or lagging engine asks for recent steps only
            self.steps.pop(old), self.done.pop(old, None)
        if len(self.steps[step]) == self.engines:
            self._event(step).set()

    async def get(self, step: int) -> list:
        try:
            await asyncio.wait_for(self._event(step).wait(), self.timeout_s)
        except TimeoutError:
            raise TimeoutError(
                f"step {step}: {len(self.steps.get(step, {}))} of {self.engines} engines shared their groups within "
                f"{self.timeout_s:.0f} s (does every engine get prompts? --vllm.num_engines <= --rollout.batch_size)"
            ) from None
        return [g for i in sorted(self.steps[step]) for g in self.steps[step][i]]


def placement(args, index: int, shared_pg=None) -> dict:
    """Ray options of engine `index`, as OpenRLHF places its vLLM engines: a GPU of its own on GPUs (`--ds.device
    cuda`, but a ShapesWorld model, which runs on CPU), else one CPU; with `--train.colocate_all` (`shared_pg`, one
    bundle per actor rank) a 0.2 share of actor rank `index`'s bundle (its GPU) beside the actor and reference ranks.
    """
    gpu = args.ds.device == "cuda" and not (Path(args.actor.model_name_or_path) / "umm_config.json").is_file()
    if shared_pg is None:
        return {"num_cpus": 1, "num_gpus": int(gpu)}
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = PlacementGroupSchedulingStrategy(placement_group=shared_pg, placement_group_bundle_index=index)
    return {"num_cpus": 0.2, "num_gpus": 0.2 if gpu else 0, "scheduling_strategy": strategy}


def create_engines(args, shared_pg=None):
    """`--rollout.engine` factory: `--vllm.num_engines` UMM engines, placed by `placement`; on a GPU a model of the
    interface runs in `--ds.param_dtype`."""
    import ray
    from openrlhf.utils.utils import convert_to_torch_dtype

    from umm_plugin.openrlhf.config import plugin_config

    cfg = plugin_config().umm
    log_dir = cfg.log_dir or str(Path(args.ckpt.output_dir) / "umm")
    eval_prompts = args.eval.dataset or args.data.prompt_dataset  # a real model's evaluation prompts
    lora = _lora_config(args) if args.ds.lora.rank > 0 else None
    actor = ray.remote(UMMRolloutEngine)
    engines = max(1, args.vllm.num_engines or 1)
    # OpenRLHF hands a step's prompts to idle engines in turn: engine i serves prompts i, i + engines, ...
    prompts = getattr(args.rollout, "vllm_generate_batch_size", None) or args.rollout.batch_size
    ckpt = {"path": args.ckpt.path, "save_steps": args.ckpt.save_steps, "max_num": args.ckpt.max_num}
    ckpt["load"] = bool(args.ckpt.load_enable)
    gpu = placement(args, 0, shared_pg)["num_gpus"] > 0
    store = ray.remote(GroupStore).options(num_cpus=0).remote(engines) if engines > 1 else None
    return [
        actor.options(**placement(args, i, shared_pg)).remote(
            args.actor.model_name_or_path,
            args.train.seed,
            args.train.agent_func_path,
            lora,
            log_dir,
            i,
            args.rollout.temperature,
            eval_prompts,
            [p for p in (args.data.prompt_dataset, args.eval.dataset) if p],
            len(range(i, prompts, engines)),
            ckpt,
            "cuda" if gpu else "cpu",
            convert_to_torch_dtype(args.ds.param_dtype) if gpu else None,
            store,
        )
        for i in range(engines)
    ]

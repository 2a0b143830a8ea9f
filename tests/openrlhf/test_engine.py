"""The UMM rollout engine and the GvU executor, in-process (no Ray): the calls OpenRLHF makes, checked in numbers."""

import asyncio
import json
from pathlib import Path

import pytest
import torch
from openrlhf.utils.sampling_params import SamplingParams

import umm_plugin.openrlhf.gvu_agent as gvu_agent
from umm_plugin.models.generation import SamplingConfig, continuation_logprobs, generate_image_tokens, generate_text
from umm_plugin.models.umm import DESCRIBE, UMM
from umm_plugin.openrlhf.engine import UMMRolloutEngine, _lora_config
from umm_plugin.rewards.gvu import gvu_reward

PROMPTS = ["a photo of a red circle", "a photo of two blue squares", "a photo of a green triangle"]


def _image_params(umm, temperature=0.0):
    lay = umm.layout
    return SamplingParams(
        temperature=temperature,
        max_tokens=lay.length,
        allowed_token_ids=lay.code_ids + [lay.eol],
    )


async def _gather(*coros):
    return await asyncio.gather(*coros)


@pytest.fixture
def umm_flags(monkeypatch):
    def set_flags(**flags):  # dotted flag names, as the driver exports them: {"gvu.include_eos": False}
        monkeypatch.setenv("OPENRLHF_PLUGIN_ARGS", json.dumps(flags))

    set_flags()
    return set_flags


def test_concurrent_requests_are_batched_and_match_the_direct_calls(pretrained_dir, umm_flags):
    engine = UMMRolloutEngine(str(pretrained_dir), seed=0, agent_func_path=None)
    umm = engine.umm
    gen_ids = [umm.generation_prompt(p) for p in PROMPTS]
    codes = torch.randint(0, umm.layout.num_codes, (2, umm.layout.grid**2), generator=torch.Generator().manual_seed(1))
    contexts = [umm.chat(c, DESCRIBE) for c in codes]
    targets = [umm.ids(PROMPTS[0]) + [umm.tokenizer.eos_token_id], umm.ids(PROMPTS[1])]
    score = SamplingParams(max_tokens=1, prompt_logprobs=0)
    outs = asyncio.run(
        _gather(
            *[engine.generate(ids, _image_params(umm)) for ids in gen_ids],
            *[engine.generate(c + t, score) for c, t in zip(contexts, targets)],
        )
    )
    # greedy image tokens: the same as one direct batched call of the KV-cache generator
    direct = generate_image_tokens(umm.backbone, umm.layout, gen_ids, sampling=SamplingConfig(0.0), pad_id=0)
    for out, row in zip(outs[:3], direct):
        assert out.outputs[0].token_ids == umm.layout.tokens(row)
    # prompt_logprobs over the target positions: the one-pass continuation log-probs
    ref, mask = continuation_logprobs(umm.backbone, contexts, targets, pad_id=umm.tokenizer.pad_token_id)
    for out, c, t, r, m in zip(outs[3:], contexts, targets, ref, mask):
        assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(c) + len(t)
        got = torch.tensor([d[tok].logprob for d, tok in zip(out.prompt_logprobs[len(c) :], t)])
        assert torch.allclose(got, r[m], atol=1e-5)


def test_text_requests_stop_like_vllm_and_match_the_direct_generator(pretrained_dir, umm_flags):
    engine = UMMRolloutEngine(str(pretrained_dir), seed=0, agent_func_path=None)
    umm = engine.umm
    tok, off = umm.tokenizer, umm.layout.image_offset
    rows = [umm.reason_prompt(p) for p in PROMPTS]
    stop = tok.convert_tokens_to_ids(["</think>", "<SOM>"])
    params = SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=stop, allowed_token_ids=list(range(off)))
    outs = asyncio.run(_gather(*[engine.generate(r, params) for r in rows]))
    direct = generate_text(umm.backbone, rows, 12, {*stop, tok.eos_token_id}, off, pad_id=tok.pad_token_id)
    for out, want in zip(outs, direct):
        got = out.outputs[0]
        assert got.token_ids == want and max(want) < off  # text vocabulary only
        ends = bool(want) and want[-1] in {*stop, tok.eos_token_id}
        assert got.finish_reason == ("stop" if ends else "length") and (ends or len(want) == 12)
        assert all(t not in {*stop, tok.eos_token_id} for t in want[:-1])  # nothing after a stop token


def test_text_requests_keep_to_any_allowed_subset(pretrained_dir, umm_flags):
    # vLLM's allowed_token_ids may be any token set (the R3 self judge asks for one colour word): each greedy token is
    # the argmax over the set, computed here from one direct forward pass per token.
    engine = UMMRolloutEngine(str(pretrained_dir), seed=0, agent_func_path=None)
    umm = engine.umm
    allowed = umm.ids("red blue green circle")
    params = SamplingParams(temperature=0.0, max_tokens=3, allowed_token_ids=allowed)
    rows = [umm.reason_prompt(p) for p in PROMPTS]
    outs = asyncio.run(_gather(*[engine.generate(r, params) for r in rows]))
    for out, row in zip(outs, rows):
        want = []
        for _ in range(3):
            logits = umm.backbone(input_ids=torch.tensor([row + want])).logits[0, -1]
            want.append(allowed[int(logits[allowed].argmax())])
        assert out.outputs[0].token_ids == want
    with pytest.raises(ValueError, match="text tokens"):  # an image code in a text request
        code = SamplingParams(max_tokens=1, allowed_token_ids=[umm.layout.image_offset])
        asyncio.run(engine.generate(rows[0], code))


class _GreedyVLLM:
    """What the executor may use of a vLLM engine (no `umm` attribute): `generate(ids, params)` honouring
    allowed_token_ids and max_tokens. Greedy, a full forward per token, no cache: too slow for anything but tests."""

    def __init__(self, model_dir):
        self.kwargs = {"model": model_dir}
        self.backbone = UMM.from_pretrained(model_dir).backbone
        self.calls = []

    async def generate(self, ids, params):
        from types import SimpleNamespace

        self.calls.append((len(ids), params.max_tokens, params.seed))
        out, allowed = list(ids), torch.tensor(params.allowed_token_ids)
        for _ in range(params.max_tokens):
            logits = self.backbone(input_ids=torch.tensor([out])).logits[0, -1]
            out.append(int(allowed[logits[allowed].argmax()]))
        return SimpleNamespace(outputs=[SimpleNamespace(token_ids=out[len(ids) :])])


def test_on_vllm_the_executor_feeds_each_eol_row_by_row(pretrained_dir, umm_flags):
    """vLLM cannot be told to emit <EOL> at row ends (the model never learned to), so the executor asks for one row
    of codes at a time and feeds the <EOL>: greedy, that is exactly our engine's one-call image."""
    engine = _GreedyVLLM(str(pretrained_dir))
    executor = gvu_agent.AgentExecutor()
    umm = executor.model(engine)
    lay = umm.layout
    ids = umm.generation_prompt(PROMPTS[1])
    tokens, codes = asyncio.run(executor.generate_codes(engine, SamplingParams(temperature=0.0, seed=5), ids))
    direct = generate_image_tokens(umm.backbone, lay, [ids], sampling=SamplingConfig(0.0), pad_id=0)[0]
    assert tokens == lay.tokens(direct) and torch.equal(codes, direct)
    # each row one call over the grown prompt; a seeded request moves its seed on, so rows draw fresh noise
    assert engine.calls == [(len(ids) + r * (lay.grid + 1), lay.grid, 5 + r) for r in range(lay.grid)]


def test_engine_rejects_requests_it_cannot_serve(pretrained_dir, umm_flags):
    engine = UMMRolloutEngine(str(pretrained_dir), seed=0, agent_func_path=None)
    ids = engine.umm.generation_prompt(PROMPTS[0])
    some_codes = list(range(engine.umm.layout.image_offset, engine.umm.layout.image_offset + 3))
    with pytest.raises(ValueError, match="image-token generation"):
        asyncio.run(engine.generate(ids, SamplingParams(max_tokens=5, allowed_token_ids=some_codes)))
    with pytest.raises(ValueError, match="logprobs"):
        asyncio.run(engine.generate(ids, SamplingParams(max_tokens=5, logprobs=1)))


@pytest.mark.parametrize("include_eos", [True, False])
def test_gvu_executor_reward_equals_the_one_pass_reward(pretrained_dir, umm_flags, include_eos):
    umm_flags(**{"gvu.include_eos": include_eos})
    engine = UMMRolloutEngine(str(pretrained_dir), seed=0, agent_func_path=gvu_agent.__file__)
    params = SamplingParams(temperature=1.0, max_tokens=None)
    results = asyncio.run(engine.generate_responses(PROMPTS[1], "two_object", params, 2048, None, num_samples=4))
    umm = engine.umm
    lay = umm.layout
    n_prompt = len(umm.generation_prompt(PROMPTS[1]))
    codes = torch.stack([lay.codes(r["observation_tokens"][n_prompt:]) for r in results])  # checks the rows
    assert codes.shape == (4, lay.grid**2)
    assert all(r["action_ranges"] == [(n_prompt, n_prompt + lay.length)] for r in results)
    expected = gvu_reward(umm, codes, [PROMPTS[1]] * 4, include_eos=include_eos)
    got = torch.tensor([r["reward"] for r in results])
    assert torch.allclose(got, expected, atol=1e-5)
    assert len(set(got.tolist())) > 1  # four different samples, four different rewards
    for r in results:
        assert set(r["extra_logs"]) == {"gvu_reward", "shapes_accuracy", "objects_per_image", "extra_objects"}
    assert len(engine.records) == 4


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_judge_reference_scores_with_the_base_weights(pretrained_dir, umm_flags, mode):
    """LoRA: the same weights with the adapter off; fully fine-tuned: one frozen copy of the base backbone."""
    from types import SimpleNamespace

    umm_flags(**{"umm.judge.weights": "reference"})
    lora = SimpleNamespace(rank=4, alpha=8, target_modules="all-linear", dropout=0.0)
    lora = _lora_config(SimpleNamespace(ds=SimpleNamespace(lora=lora))) if mode == "lora" else None
    engine = UMMRolloutEngine(str(pretrained_dir), 0, None, lora=lora)
    with torch.no_grad():  # a trained policy: the adapter's B != 0, or every weight moved as a sync writes it
        for name, p in engine.params.items():
            if mode == "full" or "lora_B" in name:
                p.add_(
                    torch.randn(p.shape, generator=torch.Generator().manual_seed(0))
                    * (0.5 if mode == "lora" else 0.05)
                )
    base = UMM.from_pretrained(pretrained_dir)
    c = torch.arange(base.layout.grid**2) % base.layout.num_codes
    seq = base.chat(c, DESCRIBE) + base.ids(PROMPTS[0])
    params = SamplingParams(max_tokens=1, prompt_logprobs=0)
    ref, pol = asyncio.run(_gather(engine.generate(seq, params, use_adapter=False), engine.generate(seq, params)))
    lp = lambda out: torch.tensor([d[t].logprob for d, t in zip(out.prompt_logprobs[1:], seq[1:])])  # noqa: E731
    with torch.no_grad():
        direct = torch.log_softmax(base.backbone(torch.tensor([seq])).logits[0, :-1].float(), -1)
    direct = direct.gather(-1, torch.tensor(seq[1:])[:, None]).squeeze(-1)
    assert torch.allclose(lp(ref), direct, atol=1e-5)  # the reference = the base model exactly
    assert (lp(pol) - direct).abs().max() > 1e-2  # the live weights = the policy, not the base
    n_backbone = sum(p.numel() for p in base.backbone.parameters())
    n_engine = sum(p.numel() for n, p in engine.umm.backbone.named_parameters() if "lora_" not in n)
    assert n_engine == n_backbone and engine.umm.backbone is not engine.reference  # the swap is undone
    assert (engine.reference is None) == (mode == "lora")  # a second copy only without LoRA


def test_engine_evaluation_writes_curve_grid_and_a_loadable_checkpoint(pretrained_dir, umm_flags, tmp_path):
    umm_flags(**{"umm.eval.n": 16, "umm.eval.steps": 1})
    engine = UMMRolloutEngine(str(pretrained_dir), 0, None, log_dir=str(tmp_path))
    engine.record({"gvu_reward": 0.25, "shapes_accuracy": 0.0})
    row = engine.evaluate_and_save()
    assert 0 <= row["accuracy"] <= 1 and 0 < row["reward"] <= 1 and row["train_gvu_reward"] == 0.25
    lines = (tmp_path / "curve.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("step,accuracy,reward")  # init eval + this one
    assert (tmp_path / "curve.png").is_file() and (tmp_path / "grid_00000.png").is_file()
    assert (tmp_path / "grid_prompts.txt").read_text().splitlines()[:2] == [
        "a photo of a square",
        "a photo of a triangle and a circle",
    ]
    assert not (Path(tmp_path) / ".policy.tmp").exists()
    again = UMM.from_pretrained(tmp_path / "policy")
    assert all(torch.equal(a, b) for a, b in zip(again.backbone.parameters(), engine.umm.backbone.parameters()))


def test_non_finite_reward_is_an_error_naming_the_prompt(pretrained_dir, umm_flags):
    engine = UMMRolloutEngine(str(pretrained_dir), 0, gvu_agent.__file__)
    umm = engine.umm
    with torch.no_grad():  # "describe" occurs only in the judge's context: generation is untouched, scoring is NaN
        umm.backbone.get_input_embeddings().weight[umm.ids("describe")[0]] = float("nan")
    params = SamplingParams(temperature=1.0)
    with pytest.raises(ValueError, match="GvU reward is nan for prompt 'a photo of a red circle'"):
        asyncio.run(engine.generate_responses(PROMPTS[0], "single_object", params, 2048, None, num_samples=2))


@pytest.mark.parametrize("scorer, recipe", [("prob", False), ("caption", True)])
def test_srum_executor_token_rewards_equal_the_one_pass_map(pretrained_dir, monkeypatch, scorer, recipe):
    import umm_plugin.openrlhf.srum_agent as srum_agent
    from umm_plugin.algos.srum import pool_to_grid
    from umm_plugin.rewards.srum import reward_map, self_judge

    # recipe: the online recipe's map (assigned regions, local min, background by the shares of objects found and
    # regions claimed, the relation read off the claimed boxes)
    flags = {"srum.scorer": scorer, "srum.k": 3, "srum.assign": recipe, "srum.local_min": recipe}
    flags.update({f"srum.{name}": recipe for name in ("missing", "extra", "relation")})
    monkeypatch.setenv("OPENRLHF_PLUGIN_ARGS", json.dumps(flags))
    engine = UMMRolloutEngine(str(pretrained_dir), seed=0, agent_func_path=srum_agent.__file__)
    params = SamplingParams(temperature=1.0, max_tokens=None)
    prompt = "a photo of a red circle to the left of a blue square"
    results = asyncio.run(engine.generate_responses(prompt, "position", params, 2048, None, num_samples=3))
    umm = engine.umm
    n_prompt = len(umm.generation_prompt(prompt))
    codes = torch.stack([umm.layout.codes(r["observation_tokens"][n_prompt:]) for r in results])
    images = umm.vq.decode(codes)
    boxes, local, g, found, claimed = self_judge(umm, images, [prompt] * 3, 3, scorer, assign=recipe, relation=recipe)
    bg = (found * claimed).tolist()
    maps = torch.stack([reward_map(*a, 32, recipe, b) for a, b in zip(zip(boxes, local, g.tolist()), bg)])
    for r, cells, m, f in zip(results, pool_to_grid(maps, umm.layout.grid), maps, found.tolist()):
        assert r["token_rewards"][:n_prompt] == [0.0] * n_prompt
        want = torch.tensor(umm.layout.spread(cells.tolist()))  # a cell's value on its code, 0 on each <EOL>
        assert torch.allclose(torch.tensor(r["token_rewards"][n_prompt:]), want, atol=1e-5)
        assert r["reward"] == pytest.approx(m.mean().item(), abs=1e-5)
        assert r["extra_logs"]["srum_found"] == pytest.approx(f)
        assert {"srum_global", "srum_map_mean", "shapes_accuracy"} <= set(r["extra_logs"])


def _step(engine, order, delays=()):
    """One rollout step as OpenRLHF dispatches it: a generate_responses call per prompt of `order` (2 samples each),
    the i-th sent after delays[i] seconds; returns {prompt: (image tokens, rewards)}."""
    params = SamplingParams(temperature=1.0, max_tokens=None)

    async def call(prompt, delay):
        await asyncio.sleep(delay)
        out = await engine.generate_responses(prompt, "label", params, 2048, None, num_samples=2)
        return prompt, ([r["observation_tokens"] for r in out], [r["reward"] for r in out])

    delays = list(delays) or [0.0] * len(order)
    return dict(asyncio.run(_gather(*[call(p, d) for p, d in zip(order, delays)])))


def test_rollouts_do_not_depend_on_arrival_order_or_timing(pretrained_dir, umm_flags):
    """A step's executors start together once the step's share of prompts arrived, in prompt order, and a batch
    runs once every executor waits: prompts sent in another order, one of them late, draw the same samples."""
    runs = []
    for order, delays in ((PROMPTS, ()), (PROMPTS[::-1], (0.0, 0.2, 0.05))):
        engine = UMMRolloutEngine(str(pretrained_dir), seed=0, agent_func_path=gvu_agent.__file__, share=3)
        runs.append(_step(engine, order, delays))
    assert runs[0] == runs[1]
    tokens = [t for toks, _ in runs[0].values() for t in toks]
    assert len({tuple(t) for t in tokens}) == len(tokens)  # every sample drew its own image


def test_engine_state_restores_generators_records_and_the_curve(pretrained_dir, umm_flags, tmp_path):
    """The state saved at a sync, restored by an engine started on OpenRLHF's checkpoint of that step: the next
    step draws what the uninterrupted engine draws, unlogged rollout stats survive, later curve rows are dropped."""
    ckpt = {"path": str(tmp_path / "ckpt"), "save_steps": 1, "max_num": 1, "load": True}
    kw = {"seed": 0, "agent_func_path": gvu_agent.__file__, "share": 3, "ckpt": ckpt, "log_dir": str(tmp_path)}
    engine = UMMRolloutEngine(str(pretrained_dir), **kw)  # no checkpoint yet: starts afresh
    _step(engine, PROMPTS)
    for _ in range(3):  # three weight syncs end (state saved every step, the oldest beyond 2 removed)
        engine.step_done()
    saved = sorted(p.name for p in (tmp_path / "ckpt" / "umm_engine").iterdir())
    assert saved == ["global_step2_engine0.pt", "global_step3_engine0.pt"]
    (tmp_path / "curve.csv").write_text("step,reward\n0,0.5\n3,0.6\n4,0.7\n")
    (tmp_path / "ckpt" / "_actor").mkdir(parents=True)
    (tmp_path / "ckpt" / "_actor" / "latest").write_text("global_step3")
    restored = UMMRolloutEngine(str(pretrained_dir), **kw)
    assert restored.syncs == 3 and restored.records == engine.records and len(engine.records) == 6
    assert (tmp_path / "curve.csv").read_text().splitlines() == ["step,reward", "0,0.5", "3,0.6"]
    restored.step_done()  # the weights a resumed actor sends first (the checkpoint's): not a step
    assert restored.syncs == 3
    other = UMMRolloutEngine(str(pretrained_dir), **kw)
    with torch.no_grad():
        next(iter(other.params.values())).add_(1e-3)  # an actor checkpoint of another run
    with pytest.raises(RuntimeError, match="differ from those this engine held at step 3"):
        other.step_done()
    assert _step(restored, PROMPTS) == _step(engine, PROMPTS)
    (tmp_path / "ckpt" / "_actor" / "latest").write_text("global_step9")
    with pytest.raises(FileNotFoundError, match="global_step9_engine0.pt is missing"):
        UMMRolloutEngine(str(pretrained_dir), **kw)


def test_engines_are_placed_as_openrlhf_places_vllm_engines(tmp_path):
    """A GPU of its own on GPUs (a ShapesWorld model stays on CPU), else one CPU; with --train.colocate_all a 0.2 share
    of actor rank i's bundle (its GPU, beside the actor and reference ranks there)."""
    from types import SimpleNamespace

    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from umm_plugin.openrlhf.engine import placement

    shapes, janus = tmp_path / "shapes", tmp_path / "janus"
    shapes.mkdir(), janus.mkdir(), (shapes / "umm_config.json").write_text("{}")

    def args(device, model):
        return SimpleNamespace(ds=SimpleNamespace(device=device), actor=SimpleNamespace(model_name_or_path=str(model)))

    assert placement(args("cpu", janus), 1) == {"num_cpus": 1, "num_gpus": 0}
    assert placement(args("cuda", shapes), 1) == {"num_cpus": 1, "num_gpus": 0}  # ShapesWorld stays on CPU
    assert placement(args("cuda", janus), 1) == {"num_cpus": 1, "num_gpus": 1}
    pg = object()  # the driver's placement group, only handed on
    for device, model, gpus in (("cuda", janus, 0.2), ("cuda", shapes, 0), ("cpu", janus, 0)):
        shared = placement(args(device, model), 1, pg)
        strategy = shared.pop("scheduling_strategy")
        assert shared == {"num_cpus": 0.2, "num_gpus": gpus} and isinstance(strategy, PlacementGroupSchedulingStrategy)
        assert strategy.placement_group is pg and strategy.placement_group_bundle_index == 1


def test_the_group_store_hands_every_engine_all_groups_once_all_have_put_theirs():
    from umm_plugin.openrlhf.engine import GroupStore

    async def main():
        store = GroupStore(2)
        waiting = asyncio.ensure_future(store.get(3))  # engine 0 asks before engine 1 has put its groups
        await store.put(3, 1, ["b1"])
        await asyncio.sleep(0)
        assert not waiting.done()
        await store.put(3, 0, ["a1", "a2"])
        assert await waiting == ["a1", "a2", "b1"] == await store.get(3)  # in engine order
        await store.put(6, 0, [])  # steps more than two behind are dropped
        assert 3 not in store.steps
        late = GroupStore(2, timeout_s=0.05)
        await late.put(1, 0, ["a"])
        with pytest.raises(TimeoutError, match="step 1: 1 of 2 engines shared their groups within 0 s"):
            await late.get(1)

    asyncio.run(main())

"""The rollout engine and the GvU executor serving a tiny Janus in-process (no Ray): image tokens as the actor's RL
view numbers them, GvU's reward read off the decoded pixels in one batched pass, the reference judge with LoRA off,
and evaluation writing a Janus checkpoint."""

import asyncio
import json
from types import SimpleNamespace

import pytest
import torch
from openrlhf.utils.sampling_params import SamplingParams
from transformers import AutoModelForImageTextToText

import umm_plugin.openrlhf.gvu_agent as gvu_agent
from umm_plugin.models.generation import SamplingConfig, left_pad
from umm_plugin.models.janus import JanusUMM
from umm_plugin.openrlhf.engine import UMMRolloutEngine, _lora_config

PROMPT = "a photo of a cell phone and a dog"


async def _gather(*coros):
    return await asyncio.gather(*coros)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def flags(monkeypatch):
    def set_flags(**values):  # dotted flag names, as the driver exports them
        monkeypatch.setenv("OPENRLHF_PLUGIN_ARGS", json.dumps(values))

    set_flags()
    return set_flags


def _gvu(janus, codes, prompt, include_eos):
    logp, mask = janus.text_logprobs(janus.decode(codes), janus.describe, [prompt] * len(codes))
    if not include_eos:  # the end token is each row's last scored token
        mask[torch.arange(len(mask)), mask.sum(-1) - 1] = False
    return torch.exp((logp * mask).sum(-1) / mask.sum(-1))


@pytest.mark.parametrize("include_eos", [True, False])
def test_gvu_executor_on_janus_scores_the_decoded_image(tiny_janus_dir, flags, include_eos):
    flags(**{"gvu.include_eos": include_eos})
    engine = UMMRolloutEngine(str(tiny_janus_dir), seed=0, agent_func_path=gvu_agent.__file__)
    janus = engine.umm
    params = SamplingParams(temperature=1.0, max_tokens=None)
    results = asyncio.run(engine.generate_responses(PROMPT, "two_object", params, 2048, None, num_samples=4))
    ids = janus.generation_prompt(PROMPT)
    n = janus.image_tokens
    for r in results:
        assert r["observation_tokens"][: len(ids)] == ids and r["action_ranges"] == [(len(ids), len(ids) + n)]
        assert all(t in janus.image_ids for t in r["observation_tokens"][len(ids) :])
    codes = torch.tensor([r["observation_tokens"][len(ids) :] for r in results]) - janus.image_offset
    expected = _gvu(janus, codes, PROMPT, include_eos)
    got = torch.tensor([r["reward"] for r in results])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert len(set(got.tolist())) == 4  # four samples, four rewards
    assert set(results[0]["extra_logs"]) == {"gvu_reward"}  # COCO classes: no ShapesWorld evaluator to log


def test_a_rollout_longer_than_max_len_is_an_error_not_a_cut(tiny_janus_dir, flags):
    """OpenRLHF cuts an observation to --data.max_len, and the actions with it: the engine refuses it instead."""
    engine = UMMRolloutEngine(str(tiny_janus_dir), seed=0, agent_func_path=gvu_agent.__file__)
    n = len(engine.umm.generation_prompt(PROMPT)) + engine.umm.image_tokens
    params = SamplingParams(temperature=1.0, max_tokens=None)
    with pytest.raises(ValueError, match=f"a rollout of {n} tokens is longer than --data.max_len {n - 1}"):
        asyncio.run(engine.generate_responses(PROMPT, "two_object", params, n - 1, None, num_samples=2))
    (exact,) = asyncio.run(engine.generate_responses(PROMPT, "two_object", params, n, None))
    assert len(exact["observation_tokens"]) == n


def test_janus_image_requests_are_the_samplers_codes_and_others_are_refused(tiny_janus_dir, flags):
    engine = UMMRolloutEngine(str(tiny_janus_dir), seed=0, agent_func_path=None)
    janus = engine.umm
    rows = [janus.generation_prompt(p) for p in (PROMPT, "a photo of a stop sign")]
    params = SamplingParams(temperature=0.0, max_tokens=janus.image_tokens, allowed_token_ids=janus.image_ids)
    outs = asyncio.run(_gather(*[engine.generate(r, params) for r in rows]))
    direct = janus.sample_rows(rows, SamplingConfig(temperature=0.0))
    assert [o.outputs[0].token_ids for o in outs] == (direct + janus.image_offset).tolist()
    for refused in (SamplingParams(max_tokens=5, allowed_token_ids=[1, 2]), SamplingParams(prompt_logprobs=0)):
        with pytest.raises(ValueError, match="text \\(allowed_token_ids unset or the whole text vocabulary\\)"):
            asyncio.run(engine.generate(rows[0], refused))
    # a text turn about a picture (R3's reflection): multi_modal_data fills the prompt's placeholders
    pixels = janus.decode(direct[:1])
    ids = janus.reflect_prompt(pixels[0], PROMPT)
    out = asyncio.run(engine.generate(ids, SamplingParams(temperature=0.0, max_tokens=6), {"image": [pixels[0]]}))
    want = janus.sample_text(*left_pad([ids], janus.pad_id), janus.pixel_values(pixels), 6)[0]
    assert out.outputs[0].token_ids == want
    with pytest.raises(ValueError, match="image placeholders but no pixel values"):
        asyncio.run(engine.generate(ids, SamplingParams(temperature=0.0, max_tokens=6)))


def test_janus_reference_judge_is_the_base_with_lora_off(tiny_janus_dir, flags):
    flags(**{"umm.judge.weights": "reference"})
    lora = SimpleNamespace(rank=4, alpha=8, target_modules=["model.language_model.layers.0.self_attn.q_proj"])
    lora = _lora_config(SimpleNamespace(ds=SimpleNamespace(lora=SimpleNamespace(**vars(lora), dropout=0.0))))
    engine = UMMRolloutEngine(str(tiny_janus_dir), 0, None, lora=lora)
    assert {n for n in engine.params if "lora_" in n} == {
        f"base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_{ab}.default.weight" for ab in "AB"
    }  # the names OpenRLHF's actor sends for a VLM with LoRA: its trainable weights
    with torch.no_grad():  # a trained adapter
        engine.params[next(n for n in engine.params if "lora_B" in n)].normal_(0, 1.0)
    codes = torch.arange(engine.umm.image_tokens)[None] % 64
    ref, pol = asyncio.run(
        _gather(
            engine.text_logprobs(codes[0], "Describe the image.", PROMPT, use_adapter=False),
            engine.text_logprobs(codes[0], "Describe the image.", PROMPT),
        )
    )
    base = JanusUMM.from_pretrained(tiny_janus_dir)
    logp, mask = base.text_logprobs(base.decode(codes), "Describe the image.", [PROMPT])
    torch.testing.assert_close(torch.tensor(ref[0]), logp[0][mask[0]], atol=1e-5, rtol=0)
    assert (torch.tensor(pol[0]) - logp[0][mask[0]]).abs().max() > 1e-3


def test_janus_evaluation_writes_a_janus_checkpoint(tiny_janus_dir, flags, coco_file, tmp_path):
    flags(**{"umm.eval.n": 4, "umm.eval.steps": 1})
    engine = UMMRolloutEngine(str(tiny_janus_dir), 0, None, log_dir=str(tmp_path), eval_prompts=str(coco_file))
    lines = (tmp_path / "curve.csv").read_text().splitlines()  # the engine evaluates its start at once
    assert lines[0].split(",")[:3] == ["step", "reward", "yes_no_pass_single_object"] and len(lines) == 2
    assert (tmp_path / "grid_prompts.txt").read_text().splitlines()[0] == "a photo of a stop sign"
    policy = AutoModelForImageTextToText.from_pretrained(tmp_path / "policy")
    for name, value in engine.umm.model.state_dict().items():
        assert torch.equal(value, policy.state_dict()[name]), name


def test_srum_executor_on_janus_rewards_each_image_token_with_the_pooled_map(tiny_janus_dir, flags, coco_file):
    import umm_plugin.openrlhf.srum_agent as srum_agent
    from umm_plugin.algos.srum import pool_to_grid
    from umm_plugin.rewards.srum import components_proposer, geneval_self_judge, reward_map
    from umm_plugin.worlds.geneval import load_geneval

    switches = {"srum.assign": True, "srum.local_min": True, "srum.missing": True, "srum.extra": True}
    flags(**switches, **{"srum.relation": True, "srum.k": 3})
    engine = UMMRolloutEngine(str(tiny_janus_dir), 0, srum_agent.__file__, prompt_files=[str(coco_file)])
    janus, meta = engine.umm, load_geneval(coco_file)[4]  # the position line: a stop sign right of a train
    params = SamplingParams(temperature=1.0, max_tokens=None)
    results = asyncio.run(engine.generate_responses(meta["prompt"], meta["tag"], params, 2048, None, num_samples=2))
    n_prompt = len(janus.generation_prompt(meta["prompt"]))
    for r in results:
        codes = torch.tensor(r["observation_tokens"][n_prompt:]) - janus.image_offset
        pixels = janus.decode(codes[None])
        proposer = lambda image: components_proposer(image, 3)  # noqa: E731
        boxes, local, g, found, claimed = geneval_self_judge(janus, pixels, [meta], proposer, 3, relation=True)
        m = reward_map(boxes[0], local[0], g.item(), janus.image_size, True, (found * claimed).item())
        want = pool_to_grid(m[None], 4)[0]
        assert r["token_rewards"][:n_prompt] == [0.0] * n_prompt and len(r["token_rewards"]) == n_prompt + 16
        torch.testing.assert_close(torch.tensor(r["token_rewards"][n_prompt:]), want, atol=1e-5, rtol=0)
        assert r["reward"] == pytest.approx(m.mean().item(), abs=1e-6)
    with pytest.raises(ValueError, match="in neither the training nor the eval prompt file"):
        asyncio.run(engine.generate_responses("a photo of a cow", "x", params, 2048, None, num_samples=1))


def test_srum_executor_on_janus_proposes_regions_with_sam(tiny_janus_dir, tiny_sam_dir, flags, coco_file):
    """`--srum.sam DIR`: the executor's regions are the SAM proposer's on the decoded image (SAM beside the model)."""
    import umm_plugin.openrlhf.srum_agent as srum_agent
    from umm_plugin.algos.srum import pool_to_grid
    from umm_plugin.rewards.sam import SamProposer
    from umm_plugin.rewards.srum import geneval_self_judge, reward_map
    from umm_plugin.worlds.geneval import load_geneval

    flags(**{"srum.assign": True, "srum.k": 3, "srum.sam": str(tiny_sam_dir)})
    engine = UMMRolloutEngine(str(tiny_janus_dir), 0, srum_agent.__file__, prompt_files=[str(coco_file)])
    janus, meta = engine.umm, load_geneval(coco_file)[1]
    params = SamplingParams(temperature=1.0, max_tokens=None)
    (r,) = asyncio.run(engine.generate_responses(meta["prompt"], meta["tag"], params, 2048, None))
    n_prompt = len(janus.generation_prompt(meta["prompt"]))
    pixels = janus.decode(torch.tensor(r["observation_tokens"][n_prompt:])[None] - janus.image_offset)
    sam = SamProposer.from_pretrained(tiny_sam_dir, k=3)
    boxes, local, g, found, claimed = geneval_self_judge(janus, pixels, [meta], sam, 3)
    m = reward_map(boxes[0], local[0], g.item(), janus.image_size, False, 1.0)
    got = torch.tensor(r["token_rewards"][n_prompt:])
    torch.testing.assert_close(got, pool_to_grid(m[None], 4)[0], atol=1e-5, rtol=0)
    proposer = engine.executor.proposer
    assert isinstance(proposer, SamProposer) and next(proposer.model.parameters()).device == engine.device


def test_r3_executor_on_janus_plans_judges_itself_and_reflects_on_the_picture(tiny_janus_dir, flags, coco_file):
    import numpy as np

    import umm_plugin.openrlhf.r3_agent as r3_agent
    from umm_plugin.rewards.r3 import geneval_checklist
    from umm_plugin.worlds.geneval import load_geneval

    flags(**{"r3.score": "checklist", "r3.text_tokens": 6})
    engine = UMMRolloutEngine(str(tiny_janus_dir), 0, r3_agent.__file__, prompt_files=[str(coco_file)])
    janus, meta = engine.umm, load_geneval(coco_file)[4]
    params = SamplingParams(temperature=1.0, max_tokens=None)
    stage1 = asyncio.run(engine.generate_responses(meta["prompt"], meta["tag"], params, 2048, None, num_samples=3))
    ctx = janus.reason_prompt(meta["prompt"])
    for r in stage1:  # plan (text ids), begin-of-image, then the image's 16 tokens; V = the checklist's yes share
        (a, b), (c, d) = r["action_ranges"]
        obs = r["observation_tokens"]
        assert obs[:a] == ctx and a == len(ctx) and 0 < b - a <= 6 and all(t < janus.image_offset for t in obs[a:b])
        assert obs[b:c] == [janus.boi_id] and d - c == 16 and all(t in janus.image_ids for t in obs[c:d])
        pixels = janus.decode(torch.tensor(obs[c:d])[None] - janus.image_offset)
        questions = geneval_checklist(meta, janus.ask)
        share = float((janus.yes_no(np.repeat(pixels, len(questions), 0), questions) > 0).float().mean())
        assert r["reward"] == pytest.approx(share) and r["extra_logs"]["r3_stage"] == 1.0
        assert r["token_rewards"][a:b] == [r["extra_logs"]["r3_text_reward"]] * (b - a)
        assert r["mm_train_inputs"] is None
    engine.syncs = 1  # an odd sync: stage 2 from the buffer, which now holds the three stage-1 pictures
    stage2 = asyncio.run(engine.generate_responses(meta["prompt"], meta["tag"], params, 2048, None, num_samples=3))
    assert len(engine.executor.buffer) == 3
    root = engine.executor.roots[id(params)][1]["pixels"]  # one root per group (one sampling-params object)
    assert any(root is e["pixels"] for e in engine.executor.buffer.entries)
    for r in stage2:  # the reflection sees the root through SigLIP, in the engine and (pixel values) in the actor
        obs, ranges = r["observation_tokens"], r["action_ranges"]
        assert obs[: ranges[0][0]] == janus.reflect_prompt(root, meta["prompt"])
        torch.testing.assert_close(r["mm_train_inputs"]["pixel_values"], janus.pixel_values(root[None]))
        if r["extra_logs"]["r3_stop"] == 0:  # the refine turn: a new picture from the prompt and the edit
            (a, b), (c, d) = ranges
            assert obs[c - 1] == janus.boi_id and d - c == 16 and d == len(obs)
            assert obs[b : b + 1] == [janus.eos_id] or obs[b - 1] == janus.eos_id


@pytest.mark.parametrize("kind", ["gvu", "r3"])
def test_a_bfloat16_engine_serves_the_executors(tiny_janus_dir, flags, coco_file, kind):
    """What `--gpu` runs (a Janus in bf16), on the CPU here: image and text turns, decoding and the judges."""
    import umm_plugin.openrlhf.r3_agent as r3_agent

    flags(**{"r3.judge": "self"})
    agent = gvu_agent if kind == "gvu" else r3_agent
    engine = UMMRolloutEngine(
        str(tiny_janus_dir), 0, agent.__file__, prompt_files=[str(coco_file)], dtype=torch.bfloat16
    )
    assert {p.dtype for p in engine.umm.model.parameters()} == {torch.bfloat16}
    meta = json.loads(coco_file.read_text().splitlines()[1])
    params = SamplingParams(temperature=1.0, max_tokens=None)
    results = asyncio.run(engine.generate_responses(meta["prompt"], meta["tag"], params, 2048, None, num_samples=2))
    assert all(0 <= r["reward"] <= 1 and len(r["action_ranges"]) >= 1 for r in results)

"""The R3 executor in-process on the UMM engine (no Ray): stage-1 and stage-2 trajectories as OpenRLHF sees them,
their rewards recomputed independently from the returned tokens, each judge, and the engine's round-wise eval."""

import asyncio
import csv
import json

import numpy as np
import pytest
import torch
from openrlhf.utils.sampling_params import SamplingParams

import umm_plugin.openrlhf.r3_agent as r3_agent
from umm_plugin.eval import r3_rounds
from umm_plugin.models.generation import continuation_logprobs, generate_text
from umm_plugin.models.umm import ASK, DESCRIBE
from umm_plugin.openrlhf.engine import UMMRolloutEngine
from umm_plugin.rewards.r3 import caption_objects, checklist_score, colour_slot, format_reward, is_no_edit
from umm_plugin.worlds.evaluator import detect, evaluate
from umm_plugin.worlds.grammar import make_prompts, parse_prompt
from umm_plugin.worlds.scene import COLOR_NAMES

PROMPT = "a photo of a red circle to the left of a blue square"
G = 4


def _engine(model_dir, monkeypatch, judge_flags=(), **r3):
    flags = {"umm.eval.n": 8, **{f"r3.{k}": v for k, v in r3.items()}, **dict(judge_flags)}
    monkeypatch.setenv("OPENRLHF_PLUGIN_ARGS", json.dumps(flags))
    return UMMRolloutEngine(str(model_dir), seed=0, agent_func_path=r3_agent.__file__)


def _call(engine, prompt, n=G):
    params = SamplingParams(temperature=1.0, max_tokens=None)  # one object per host call, as over Ray
    return asyncio.run(engine.generate_responses(prompt, "position", params, 2048, None, num_samples=n))


def _words(umm, ids):
    return " ".join(umm.tokenizer.convert_ids_to_tokens([t for t in ids if t != umm.tokenizer.eos_token_id]))


def _image(umm, out, span):
    codes = umm.layout.codes(out["observation_tokens"][span[0] : span[1]])
    return codes, umm.vq.decode(codes[None])[0]


def test_stage1_is_plan_then_image_with_R3s_rewards_and_feeds_the_buffer(pretrained_dir, monkeypatch):
    engine = _engine(pretrained_dir, monkeypatch, judge="evaluator", w=0.5, score="checklist")
    umm, meta = engine.umm, parse_prompt(PROMPT).meta()
    results = _call(engine, PROMPT)
    ctx = umm.reason_prompt(PROMPT)
    for out in results:
        obs, (plan, image) = out["observation_tokens"], out["action_ranges"]
        assert obs[: len(ctx)] == ctx and plan[0] == len(ctx) and image[1] == len(obs)
        plan_ids = obs[plan[0] : plan[1]]
        assert obs[plan[1] : image[0]] == umm.after_plan(plan_ids) and image[1] - image[0] == umm.layout.length
        codes, pixels = _image(umm, out, image)
        v = checklist_score(meta, detect(pixels).objects)
        f = format_reward(_words(umm, [t for t in plan_ids if t != umm.layout.som]))
        assert out["reward"] == pytest.approx(v) and out["extra_logs"]["r3_format"] == f
        want = [0.0] * len(obs)
        want[plan[0] : plan[1]] = [v * f + 0.5 * f] * (plan[1] - plan[0])
        assert out["token_rewards"] == pytest.approx(want)
    ex = engine.executor
    assert len(ex.groups) == 1 and len(ex.buffer) == 0  # the group waits for the next stage-2 step
    engine.syncs = 1
    assert asyncio.run(ex.stage(engine)) == 2 and len(ex.buffer) == G
    assert [e["v"] for e in ex.buffer.entries] == pytest.approx([r["reward"] for r in results])
    engine.syncs = 2  # the next stage-1 step's results replace these
    second = _call(engine, "a photo of two green triangles")
    engine.syncs = 3
    assert (
        asyncio.run(ex.stage(engine)) == 2
        and [e["prompt"] for e in ex.buffer.entries] == ["a photo of two green triangles"] * G
    )
    assert [e["v"] for e in ex.buffer.entries] == pytest.approx([r["reward"] for r in second])


def test_binary_score_is_one_exactly_when_the_whole_checklist_holds(pretrained_dir, monkeypatch):
    engine = _engine(pretrained_dir, monkeypatch, judge="evaluator")  # the default: the authors' 0/1 verdict
    umm, meta = engine.umm, parse_prompt(PROMPT).meta()
    for out in _call(engine, PROMPT, n=8):
        _, pixels = _image(umm, out, out["action_ranges"][1])
        assert out["reward"] == float(checklist_score(meta, detect(pixels).objects) == 1)


def test_staged_score_is_the_share_in_stage1_and_the_verdict_after(pretrained_dir, monkeypatch):
    engine = _engine(pretrained_dir, monkeypatch, judge="evaluator", score="staged")
    umm, meta = engine.umm, parse_prompt(PROMPT).meta()
    results = _call(engine, PROMPT, n=8)
    shares = [checklist_score(meta, detect(_image(umm, out, out["action_ranges"][1])[1]).objects) for out in results]
    assert [out["reward"] for out in results] == pytest.approx(shares)
    assert any(0 < v < 1 for v in shares)  # partial credit happened, so the two scores differ here
    engine.syncs = 1
    assert asyncio.run(engine.executor.stage(engine)) == 2
    assert [e["v"] for e in engine.executor.buffer.entries] == [float(v == 1) for v in shares]
    for out in _call(engine, PROMPT, n=4):  # stage 2 judges edits with the verdict
        assert out["reward"] in (0.0, 1.0) and out["extra_logs"]["r3_v_prev"] in (0.0, 1.0)


def test_stage2_shares_one_root_per_call_and_scores_the_correction(pretrained_dir, monkeypatch):
    engine = _engine(pretrained_dir, monkeypatch, judge="evaluator", score="checklist", stop_penalty=0.5)
    umm = engine.umm
    stage1 = _call(engine, PROMPT)
    engine.syncs = 1
    results = _call(engine, "a photo of two green triangles", n=8)  # the host's prompt is replaced by the root's
    roots = {id(r[1]) for r in engine.executor.roots.values()}
    assert len(roots) == 1
    root = next(iter(engine.executor.roots.values()))[1]
    ctx = umm.reflect_prompt(root["codes"], PROMPT)
    assert any(torch.equal(root["codes"], _image(umm, r, r["action_ranges"][1])[0]) for r in stage1)
    stops = []
    for out in results:
        obs, actions = out["observation_tokens"], out["action_ranges"]
        assert out["prompt"] == PROMPT and obs[: len(ctx)] == ctx and actions[0][0] == len(ctx)
        answer = _words(umm, obs[actions[0][0] : actions[0][1]])
        stopped = is_no_edit(answer)
        stops.append(float(stopped))
        if stopped:
            assert len(actions) == 1 and out["reward"] == root["v"] and actions[0][1] == len(obs)
        else:
            assert len(actions) == 2 and actions[1][1] == len(obs)
            assert actions[1][1] - actions[1][0] == umm.layout.length
            v_new = checklist_score(parse_prompt(PROMPT).meta(), detect(_image(umm, out, actions[1])[1]).objects)
            assert out["reward"] == pytest.approx(v_new)
        v_new = out["reward"]
        c = float(stopped) if root["v"] == 1 else v_new - root["v"] - 0.5 * stopped  # --r3.stop_penalty .5
        f = format_reward(answer)
        r = 1.0 * f + c * f
        assert out["extra_logs"]["r3_correction"] == pytest.approx(c)
        assert out["token_rewards"][actions[0][0] : actions[0][1]] == pytest.approx(
            [r] * (actions[0][1] - actions[0][0])
        )
        assert sum(out["token_rewards"]) == pytest.approx(r * (actions[0][1] - actions[0][0]))  # none on the image
    assert stops  # at least one branch ran; both are covered by the estimator's hand-computed test
    key = f"r3_stop_on_{'perfect' if root['v'] == 1 else 'imperfect'}_root"  # the engine curve's conditional rate
    assert sorted(r[key] for r in engine.records if key in r) == sorted(stops)


@pytest.mark.parametrize(
    "caption, base",
    [("greedy", "pretrained_dir"), pytest.param("colours", "caption_base_dir", marks=pytest.mark.slow)],
)
def test_self_judge_is_the_models_own_caption_and_yes_no(request, monkeypatch, caption, base):
    # caption_base has trained long enough to write captions, so the colour branch runs (asserted below)
    engine = _engine(request.getfixturevalue(base), monkeypatch, judge="self", score="checklist", caption=caption)
    umm = engine.umm
    results = _call(engine, PROMPT, n=3)
    tok, colours, filled = umm.tokenizer, umm.ids(" ".join(COLOR_NAMES)), 0
    for out in results:
        codes, _ = _image(umm, out, out["action_ranges"][1])
        ctx = umm.chat(codes, DESCRIBE)
        off = umm.layout.image_offset
        words = _words(umm, generate_text(umm.backbone, [ctx], r3_agent.CAPTION_TOKENS, tok.eos_token_id, off)[0])
        k = colour_slot(words.split())
        if caption == "colours" and k is not None:  # the best colour word, then greedy on
            ctx += umm.ids(" ".join(words.split()[:k]))
            colour = colours[int(umm.backbone(input_ids=torch.tensor([ctx])).logits[0, -1, colours].argmax())]
            rest = generate_text(umm.backbone, [ctx + [colour]], r3_agent.CAPTION_TOKENS, tok.eos_token_id, off)[0]
            words = " ".join(words.split()[:k]) + " " + _words(umm, [colour] + rest)
            filled += 1
        objects, meta = caption_objects(words, parse_prompt(PROMPT).meta())
        ctx = umm.chat(codes, ASK.format(prompt=PROMPT))
        lp, _ = continuation_logprobs(umm.backbone, [ctx, ctx], [umm.ids("yes"), umm.ids("no")])
        want = checklist_score(meta, objects, relation=bool(lp[0, 0] > lp[1, 0]))
        assert out["reward"] == pytest.approx(want)
    assert caption == "greedy" or filled  # the colour branch ran


def test_openai_judge_scores_through_the_server_and_fails_loudly(pretrained_dir, monkeypatch, server):
    engine = _engine(
        pretrained_dir,
        monkeypatch,
        {"umm.judge.url": server.url, "umm.judge.model": "judge-7b", "umm.judge.retries": 0},
        judge="openai",
    )
    results = _call(engine, PROMPT, n=2)
    assert len(server.requests) == 2 and server.requests[0]["body"]["model"] == "judge-7b"
    assert [r["reward"] for r in results] == [r["extra_logs"]["shapes_accuracy"] for r in results]  # a perfect VLM
    server.cfg["statuses"] = [500]
    with pytest.raises(ValueError, match="HTTP 500"):
        _call(engine, PROMPT, n=1)


def test_r3_rounds_stop_and_refine_as_the_model_answers(pretrained_dir, tmp_path, monkeypatch):
    from umm_plugin.models.umm import UMM

    model = UMM.from_pretrained(pretrained_dir)
    metas = make_prompts(12, "eval", 0)
    r = r3_rounds(model, metas, rounds=2, keep=3)
    assert len(r["accuracy_by_round"]) == 3 and len(r["reflection_accuracy_by_round"]) == 2
    assert all(0 <= a <= 1 for a in r["accuracy_by_round"]) and 0 <= r["stopped"] <= 1
    # the first reflection's accuracy splits into its stop rates on right and on wrong round-0 images
    acc0, right, wrong = r["accuracy_by_round"][0], r["first_stop_when_right"], r["first_stop_when_wrong"]
    parts = [acc0 * right if acc0 > 0 else 0.0, (1 - acc0) * (1 - wrong) if acc0 < 1 else 0.0]
    assert r["reflection_accuracy_by_round"][0] == pytest.approx(sum(parts))
    assert np.isnan(right) == (acc0 == 0) and np.isnan(wrong) == (acc0 == 1)
    # every change of accuracy after round 0 is a fixed wrong image or a broken right one
    assert r["wrong_fixed"] - r["right_broken"] == round((r["accuracy_by_round"][-1] - acc0) * len(metas))
    assert r["right_broken"] <= r["edits_of_right"] and r["wrong_fixed"] <= r["edits_of_wrong"]
    assert r["edits_of_right"] + r["edits_of_wrong"] > 0
    assert len(r["record"]) == 3 and all(len(x["images"]) == len(x["texts"]) for x in r["record"])
    # the record keeps each round's image, not a view that a later refine overwrites: its round-0 images are those
    # of a run without reflection (same seed), and evaluated round by round they give the accuracies
    record = r3_rounds(model, metas, rounds=2, keep=len(metas))["record"]
    first = r3_rounds(model, metas, rounds=0, keep=len(metas))["record"]
    assert any(not np.array_equal(x["images"][0], x["images"][-1]) for x in record)  # some prompt's image changed
    assert all(np.array_equal(x["images"][0], y["images"][0]) for x, y in zip(record, first))
    for k, acc in enumerate(r["accuracy_by_round"]):
        ok = [evaluate(x["images"][min(k, len(x["images"]) - 1)], m)[0] for x, m in zip(record, metas)]
        assert np.mean(ok) == pytest.approx(acc)
    # the engine's evaluation hook writes R3's columns and the rounds grid
    engine = _engine(pretrained_dir, monkeypatch, judge="evaluator", eval_rounds=2)
    engine.log_dir = tmp_path
    row = engine.evaluate_and_save()
    assert {"r3_accuracy_round0", "r3_accuracy_round2", "r3_reflection_round1", "r3_plan_format"} <= set(row)
    assert {"r3_first_stop_when_right", "r3_first_stop_when_wrong"} <= set(row)
    assert (tmp_path / "rounds_00000.png").is_file()
    assert "r3_accuracy_round2" in next(csv.DictReader((tmp_path / "curve.csv").open()))


def test_bad_r3_flags_are_refused():
    from umm_plugin.openrlhf.config import R3Config

    bad_flags = ({"judge": "gpt"}, {"p_perfect": 1.5}, {"weighting": "x"}, {"score": "soft"})
    for bad in bad_flags + ({"text_tokens": 0}, {"stop_penalty": -1}):
        with pytest.raises(ValueError, match="--r3"):
            R3Config(**bad)
    assert np.isclose(R3Config().p_perfect, 0.15)

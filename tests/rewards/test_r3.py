import numpy as np
import pytest
import torch

from umm_plugin.models.pretrain import NO_EDIT
from umm_plugin.rewards.r3 import (
    caption_objects,
    checklist,
    checklist_score,
    colour_slot,
    correction,
    edit_instruction,
    format_reward,
    is_no_edit,
    stage1_rewards,
    stage2_rewards,
)
from umm_plugin.worlds.evaluator import detect, evaluate
from umm_plugin.worlds.grammar import make_prompts, parse_prompt, sample_scene
from umm_plugin.worlds.scene import perturb, render

F64 = torch.float64


@pytest.mark.parametrize(
    "text",
    [
        "<think> a small red circle at top left </think>",
        "<think> a small red circle at top left </think> <SOM> 8 8 <IMAGE>",  # the image follows the plan
        "  <think>a plan</think>",  # leading whitespace, no inner spaces
        "<think> looks right </think> no further edit needed",
    ],
)
def test_format_reward_accepts_one_leading_think_block(text):
    assert format_reward(text) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "a small red circle at top left",  # missing
        "",
        "<think> </think> <SOM>",  # empty plan
        "<think></think>",
        "<think> a </think> <think> b </think>",  # duplicated
        "<think> a <think> b </think>",  # nested
        "<think> a </think> b </think>",  # stray closing tag
        "<think> a small red circle",  # never closed
        "a plan </think>",  # never opened
        "plan first <think> a </think>",  # not first
    ],
)
def test_format_reward_rejects_missing_empty_duplicated_or_late_blocks(text):
    assert format_reward(text) == 0.0


def test_no_edit_match_drops_the_think_block_and_whitespace_only():
    assert NO_EDIT == "no further edit needed"
    assert is_no_edit(NO_EDIT) and is_no_edit("<think> all there </think>  no  further edit needed ")
    assert not is_no_edit("<think> no further edit needed </think> add a red circle")
    assert not is_no_edit("no further edit needed , add a red circle") and not is_no_edit("No further edit needed")


def test_correction_every_branch():
    v_prev = torch.tensor([0.5, 0.5, 1.0, 1.0, 0.25], dtype=F64)
    v_new = torch.tensor([0.75, 0.25, 1.0, 1.0, 0.25], dtype=F64)
    answers = [
        "<think> circle missing </think> add a red circle",  # V_prev < 1, improved: +.25
        "<think> wrong colour </think> make the red circle blue",  # V_prev < 1, worsened: -.25
        "<think> all there </think> no further edit needed",  # perfect and says so: 1
        "<think> hmm </think> remove a red circle",  # perfect but edits: 0 (even though V_new is still 1)
        "<think> fine </think> no further edit needed",  # V_prev < 1: C is still V_new - V_prev = 0
    ]
    assert torch.equal(correction(v_new, v_prev, answers), torch.tensor([0.25, -0.25, 1.0, 0.0, 0.0], dtype=F64))
    # stop_penalty (ours) changes only the last branch, a stop on an imperfect root: 0 -> -0.5
    c = correction(v_new, v_prev, answers, stop_penalty=0.5)
    assert torch.equal(c, torch.tensor([0.25, -0.25, 1.0, 0.0, -0.5], dtype=F64))


def test_correction_rejects_bad_input():
    with pytest.raises(ValueError, match="v_prev"):
        correction(torch.tensor([0.5]), torch.tensor([float("nan")]), ["x"])
    with pytest.raises(ValueError, match="v_new"):
        correction(torch.tensor([1.5]), torch.tensor([0.5]), ["x"])
    with pytest.raises(ValueError, match="answers"):
        correction(torch.tensor([0.5]), torch.tensor([0.5]), [])
    with pytest.raises(ValueError, match="stop_penalty"):
        correction(torch.tensor([0.5]), torch.tensor([0.5]), ["x"], stop_penalty=-1)


def test_stage_rewards_hand_numbers():
    v = torch.tensor([1.0, 0.5, 0.5, 0.0], dtype=F64)
    f = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=F64)
    assert torch.equal(stage1_rewards(v, f), torch.tensor([2.0, 1.5, 0.0, 1.0], dtype=F64))
    assert torch.equal(stage1_rewards(v, f, w=0.5), torch.tensor([1.5, 1.0, 0.0, 0.5], dtype=F64))
    c = torch.tensor([1.0, -0.25, 0.5, 0.0], dtype=F64)
    assert torch.equal(stage2_rewards(c, f), torch.tensor([2.0, 0.75, 0.0, 1.0], dtype=F64))
    assert torch.equal(stage2_rewards(c, f, w=2.0), torch.tensor([3.0, 1.75, 0.0, 2.0], dtype=F64))


def test_checklist_score_is_one_exactly_when_the_evaluator_accepts():
    rng = np.random.default_rng(0)
    seen = set()
    for meta in make_prompts(300, "eval", 0):
        objects = sample_scene(meta, rng)
        for objs in (objects, perturb(objects, rng)[0]):
            image = render(objs)
            v = checklist_score(meta, detect(image).objects)
            assert (v == 1) == evaluate(image, meta)[0] and 0 <= v <= 1
            seen.add(round(v, 3))
    assert len(seen) >= 4  # partial credit, not just 0 / 1


def test_checklist_hand_example_relation_prompt():
    meta = parse_prompt("a photo of two red circles to the left of a blue square").meta()
    items = checklist(meta)
    assert len(items) == 4  # circles, square, the relation, nothing else
    # a caption naming two red circles and a green square, relation judged false: circles and "nothing else" pass
    objects, m = caption_objects("a photo of two red circles and a green square", meta)
    assert checklist_score(m, objects, relation=False) == 0.5
    assert checklist_score(m, objects, relation=True) == 0.75
    # without colours in the caption the colour requirements go: the square item now passes too
    objects, m = caption_objects("a photo of two circles and a square", meta)
    assert checklist_score(m, objects, relation=True) == 1.0
    # an unreadable caption names nothing: only the relation answer can pass
    objects, m = caption_objects("a photo of of", meta)
    assert objects == [] and checklist_score(m, objects, relation=True) == 0.5


def test_edit_instruction_is_what_follows_the_think_block():
    assert edit_instruction("<think> a photo of a red circle </think>  add a  blue square") == "add a blue square"
    assert edit_instruction("remove a red circle") == "remove a red circle"


@pytest.mark.parametrize(
    "caption, slot",
    [
        ("a photo of a circle and a square", 4),  # after the count word that follows "of", not the leading "a"
        ("a photo of three squares", 4),
        ("a photo of a red circle", None),  # names a colour: kept as written
        ("a photo of a circle and a blue square", None),
        ("a circle", None),  # no "of <count>": nothing to fill
        ("", None),
    ],
)
def test_colour_slot(caption, slot):
    assert colour_slot(caption.split()) == slot


def test_a_colour_caption_refutes_a_wrong_colour_the_greedy_one_cannot():
    meta = parse_prompt("a photo of a red circle").meta()
    assert checklist_score(*reversed(caption_objects("a photo of a circle", meta))) == 1  # colour-free: passes
    assert checklist_score(*reversed(caption_objects("a photo of a blue circle", meta))) < 1


def test_geneval_checklist_asks_about_each_object_then_the_whole_prompt(coco_records):
    from umm_plugin.rewards.r3 import geneval_checklist

    ask = "Is this {prompt}?"
    two = next(m for m in coco_records if m["tag"] == "two_object" and not m.get("yn_question_list"))
    first, second = (f"a photo of a {e['class']}" for e in two["include"])
    assert geneval_checklist(two, ask) == [f"Is this {first}?", f"Is this {second}?", f"Is this {two['prompt']}?"]
    single = {"prompt": "a photo of a dog", "include": [{"class": "dog", "count": 1}]}
    assert geneval_checklist(single, ask) == ["Is this a photo of a dog?"]  # no repeat
    listed = {**single, "yn_question_list": ["Is there a dog?", "Is it brown?"]}
    assert geneval_checklist(listed, ask) == ["Is there a dog?", "Is it brown?"]

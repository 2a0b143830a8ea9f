import numpy as np
import pytest
import torch

from umm_plugin.rewards.srum import (
    QUESTION,
    caption_scores,
    collect_scores,
    components_proposer,
    cut,
    object_counts,
    parse_verdict,
    prompt_objects,
    relation_holds,
    reward_map,
    self_judge,
    text_scores,
    yes_no_scores,
)
from umm_plugin.worlds.grammar import Group, Structure, make_prompts, parse_prompt, sample_scene
from umm_plugin.worlds.scene import render

# Three boxes on an 8 x 8 map: A and B overlap on [2:4, 2:4], C is alone. s = 0.6, -0.5, 0 -> (s+1)/2 = .8, .25, .5
BOXES = [(0, 0, 4, 4), (2, 2, 6, 6), (6, 6, 8, 8)]
LOCAL = torch.tensor([0.6, -0.5, 0.0])


def expected(local_min: bool) -> torch.Tensor:
    m = torch.full((8, 8), 0.5)
    if local_min:  # every box takes its own score, overlaps the lowest
        m[0:4, 0:4] = 0.8
        m[2:6, 2:6] = 0.25
        m[6:8, 6:8] = 0.5
    else:  # the authors' max: B's bad score never goes below neutral, A wins the overlap
        m[0:4, 0:4] = 0.8
    return m


@pytest.mark.parametrize("local_min", [False, True])
@pytest.mark.parametrize("g, factor", [(-1.0, 0.0), (0.0, 0.5), (1.0, 1.0)])
def test_reward_map_matches_hand_computed_example(local_min, g, factor):
    m = reward_map(BOXES, LOCAL, g, 8, local_min=local_min)
    torch.testing.assert_close(m, expected(local_min) * factor, rtol=0, atol=1e-7)


@pytest.mark.parametrize("local_min", [False, True])
def test_missing_objects_lower_the_background_only(local_min):
    # found = 1/2 (one of two asked objects claimed a region): the background is .25, every box keeps its score;
    # C (s = 0 -> .5) is now above the background under either clamp
    want = torch.full((8, 8), 0.25)
    want[0:4, 0:4] = 0.8
    if local_min:
        want[2:6, 2:6] = 0.25
    want[6:8, 6:8] = 0.5
    half = {"local_min": local_min, "background": 0.5}
    torch.testing.assert_close(reward_map(BOXES, LOCAL, 1.0, 8, **half), want, rtol=0, atol=1e-7)
    torch.testing.assert_close(reward_map(BOXES, LOCAL, 0.0, 8, **half), want / 2, rtol=0, atol=1e-7)


def test_reward_map_checks_its_inputs():
    with pytest.raises(ValueError, match="3 boxes but 2 local scores"):
        reward_map(BOXES, LOCAL[:2], 0.0, 8)
    with pytest.raises(ValueError, match="background 1.5"):
        reward_map(BOXES, LOCAL, 0.0, 8, background=1.5)


def test_proposer_finds_every_ground_truth_object_without_the_scene():
    rng = np.random.default_rng(0)
    hits = total = 0
    for meta in make_prompts(600, "train", 1):
        objects = sample_scene(meta, rng)
        found = components_proposer(render(objects), k=10)
        for o in objects:
            total += 1
            hits += max((iou(o.box, b) for b in found), default=0) >= 0.5
    assert total > 1000
    assert hits / total >= 0.99


def iou(a, b):
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_proposer_sorts_by_area_and_keeps_top_k():
    img = np.zeros((16, 16, 3), np.uint8)
    img[0:2, 0:2] = 255  # area 4
    img[5:10, 5:10, 0] = 200  # area 25
    img[12:15, 0:3, 1] = 90  # area 9
    img[15, 15] = 255  # area 1: below min_area
    assert components_proposer(img, k=5) == [(5, 5, 10, 10), (0, 12, 3, 15), (0, 0, 2, 2)]
    assert components_proposer(img, k=2) == [(5, 5, 10, 10), (0, 12, 3, 15)]
    np.testing.assert_array_equal(cut(img, (5, 5, 10, 10)).nonzero()[0], img[5:10, 5:10].nonzero()[0] + 5)


def test_proposer_splits_touching_objects_of_different_colours():
    img = np.zeros((16, 16, 3), np.uint8)
    img[2:8, 2:8] = (255, 0, 0)
    img[2:8, 8:14] = (0, 0, 255)  # touches the red square
    assert components_proposer(img, k=5) == [(2, 2, 8, 8), (8, 2, 14, 8)]
    assert components_proposer(img, k=5, colour_tol=None) == [(2, 2, 14, 8)]  # colour-blind: one region
    img[2:8, 8:14] = (230, 20, 10)  # the same colour up to render noise: one object
    assert components_proposer(img, k=5) == [(2, 2, 14, 8)]


def test_prompt_objects_name_each_distinct_object_once():
    assert prompt_objects("a photo of two red circles to the left of a large blue square") == [
        "a photo of a red circle",
        "a photo of a large blue square",
    ]
    assert prompt_objects("a photo of three triangles") == ["a photo of a triangle"]


def test_assigned_regions_claim_no_more_copies_than_the_prompt_asks_for():
    prompt = "a photo of a red circle and two blue squares"
    assert object_counts(prompt) == {"a photo of a red circle": 1, "a photo of a blue square": 2}
    # four regions, each asked against (red circle, blue square); the global answer is 0.1
    scores = {0: (0.9, -0.2), 1: (0.8, 0.3), 2: (-0.5, 0.7), 3: (0.6, 0.65)}
    owners, values = [(0, -1, -1)], [0.1]
    for b, pair in scores.items():
        for j, v in enumerate(pair):
            owners.append((0, b, j))
            values.append(v)
    boxes = [[(0, 0, 1, 1)] * 4]
    best, g, found, claimed = collect_scores(boxes, owners, values, [prompt])
    torch.testing.assert_close(best[0], torch.tensor([0.9, 0.8, 0.7, 0.65]))  # the authors': every best match
    assigned, g2, found2, claimed2 = collect_scores(boxes, owners, values, [prompt], assign=True)
    # .9 takes the circle (region 0); .8 wants the circle too, which is taken; .7 and .65 take both squares; region
    # 1's square answer (.3) comes after both squares are gone, so it is left over: -1
    torch.testing.assert_close(assigned[0], torch.tensor([0.9, -1.0, 0.7, 0.65]))
    assert g.item() == g2.item() == pytest.approx(0.1)
    assert found.item() == found2.item() == 1.0  # every asked object (circle, two squares) claimed a region
    assert claimed.item() == 1.0 and claimed2.item() == 0.75  # 3 of the 4 regions claimed
    # regions 0 and 1 only: .9 takes the circle, region 1 falls back to a square (.3): 2 of the 3 asked are found
    few_local, _, few, few_claimed = collect_scores([boxes[0][:2]], owners[:5], values[:5], [prompt], assign=True)
    torch.testing.assert_close(few_local[0], torch.tensor([0.9, 0.3]))
    assert few.item() == pytest.approx(2 / 3) and few_claimed.item() == 1.0


def test_a_stated_relation_is_read_off_the_claimed_boxes():
    prompt = "a photo of a circle to the left of a square"
    structure = parse_prompt(prompt)
    left, right, far_right = (0, 0, 4, 4), (10, 0, 14, 4), (20, 0, 24, 4)
    assert relation_holds(structure, [left, right], [0, 1]) == 1.0
    assert relation_holds(structure, [left, right], [1, 0]) == -1.0  # the mirror
    assert relation_holds(structure, [left, right], [0, -1]) == -1.0  # no square claimed
    # every circle must stand left of every square (GenEval's rule): a second circle right of the square breaks it
    assert (
        relation_holds(
            parse_prompt("a photo of two circles to the left of a square"), [left, right, far_right], [0, 1, 0]
        )
        == -1.0
    )
    assert relation_holds(structure, [left, (1, 0, 5, 4)], [0, 1]) == -1.0  # nearly on top: no relation
    with pytest.raises(ValueError, match="one object on both sides"):
        relation_holds(Structure((Group(1, "circle"), Group(1, "circle")), "left of"), [left, right], [0, 0])

    # g = .4 on both; the relation holds in image 0 (circle claims the left box) and not in image 1 (mirrored)
    owners = [(0, -1, -1), (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]
    owners += [(1, -1, -1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
    values = [0.4, 0.9, -0.6, -0.7, 0.8] + [0.4, -0.7, 0.8, 0.9, -0.6]
    boxes = [[left, right], [left, right]]
    _, g, _, _ = collect_scores(boxes, owners, values, [prompt] * 2, assign=True, relation=True)
    torch.testing.assert_close(g, torch.tensor([(0.4 + 1) / 2, (0.4 - 1) / 2]))
    _, g_off, _, _ = collect_scores(boxes, owners, values, [prompt] * 2, assign=True)
    torch.testing.assert_close(g_off, torch.tensor([0.4, 0.4]))
    # a prompt without a relation keeps the model's own g
    _, g_plain, _, _ = collect_scores(
        boxes[:1], owners[:5], values[:5], ["a photo of a circle and a square"], True, True
    )
    torch.testing.assert_close(g_plain, torch.tensor([0.4]))


def test_srum_config_checks_its_switches():
    from umm_plugin.openrlhf.config import SRUMConfig

    with pytest.raises(ValueError, match="srum extra needs assign"):
        SRUMConfig(extra=True)
    with pytest.raises(ValueError, match="srum missing needs assign"):
        SRUMConfig(missing=True)
    assert SRUMConfig(assign=True, extra=True, relation=True).relation


@pytest.mark.parametrize(
    "text, value",
    [("0.5", 0.5), ("score : -1", -1.0), ("yes", 1.0), ("no , it is not", -1.0)],
)
def test_parse_verdict(text, value):
    assert parse_verdict(text) == value


@pytest.mark.parametrize("text", ["1.5", "", "a red circle"])
def test_parse_verdict_rejects_what_it_cannot_read(text):
    with pytest.raises(ValueError, match="judge"):
        parse_verdict(text)


def test_yes_no_scores_are_the_answer_distribution_of_one_pass(tiny_umm):
    m = tiny_umm
    rng = np.random.default_rng(0)
    metas = make_prompts(3, "train", 0)
    codes = m.vq.encode(np.stack([render(sample_scene(x, rng)) for x in metas]))
    got = yes_no_scores(m, codes, [f"is this {x['prompt']} ?" for x in metas])
    for c, x, s in zip(codes, metas, got):  # independent: full logits of the unpadded row, last position
        p = m.backbone(torch.tensor([m.chat(c, f"is this {x['prompt']} ?")])).logits[0, -1].softmax(-1)
        ref = p[m.ids("yes")].sum() - p[m.ids("no")].sum()
        assert abs(s.item() - ref.item()) < 1e-5
    assert got.abs().max() <= 1


def test_self_judge_scores_every_box_and_the_layout(tiny_umm):
    m = tiny_umm
    rng = np.random.default_rng(0)
    metas = make_prompts(4, "train", 3)
    images = np.stack([render(sample_scene(x, rng)) for x in metas])
    prompts = [x["prompt"] for x in metas]
    boxes, local, g, found, claimed = self_judge(m, images, prompts, k=3)
    assert found.tolist() == claimed.tolist() == [1.0] * 4  # without assign nothing is missing or extra
    assert [len(b) for b in boxes] == [min(3, len(components_proposer(i, 10))) for i in images]
    assert [len(s) for s in local] == [len(b) for b in boxes]
    assert g.shape == (4,) and bool((g.abs() <= 1).all())
    # a region's score is its best match over the prompt's objects, each asked on the cut-out region
    codes = m.vq.encode(cut(images[0], boxes[0][0])[None])
    asks = [f"is this {o} ?" for o in prompt_objects(prompts[0])]
    best = yes_no_scores(m, codes.expand(len(asks), -1), asks).max()
    assert abs(local[0][0].item() - best.item()) < 1e-5


def test_text_scorer_fails_loudly_on_an_unreadable_answer(tiny_umm):
    # a random-init model writes word salad: the scorer must say so, never score it 0
    codes = tiny_umm.vq.encode(render([])[None])
    with pytest.raises(ValueError, match="judge"):
        text_scores(tiny_umm, codes, ["is this a photo of a red circle ?"])


def test_caption_scores_are_gvus_reward_of_the_asked_subject(tiny_umm):
    from umm_plugin.rewards.gvu import gvu_reward

    codes = torch.randint(0, tiny_umm.vq.num_codes, (2, 64), generator=torch.Generator().manual_seed(0))
    subjects = ["a photo of a red circle", "a photo of two squares"]
    got = caption_scores(tiny_umm, codes, [QUESTION.format(prompt=s) for s in subjects])
    want = 2 * gvu_reward(tiny_umm, codes, subjects, include_eos=True) - 1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

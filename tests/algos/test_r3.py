from collections import Counter

import numpy as np
import pytest
import torch

from umm_plugin.algos.r3 import TreeBuffer, segment_advantages, stage1_advantages, stage2_advantages

F64 = torch.float64
N_DRAWS = 20000
# A frequency p over 20000 draws has binomial sd sqrt(p (1 - p) / 20000) <= .0036 (p = .5), .0025 at p = .15:
# +-.01 is at least 2.8 sd at p = .5 and 4 sd at p = .15; the draws are seeded, so the test is deterministic.
TOL = 0.01


def test_stage1_advantages_hand_numbers_no_std_division():
    rewards = torch.tensor([[2.0, 1.5, 0.0, 1.5], [1.2, 0.0, 1.2, 1.2]], dtype=F64)
    v = torch.tensor([[1.0, 0.5, 0.0, 0.5], [0.2, 0.2, 0.2, 0.2]], dtype=F64)
    a_text, a_img = stage1_advantages(rewards, v)
    # means 1.25 and .9; V means .5 and .2
    assert torch.allclose(a_text, torch.tensor([[0.75, 0.25, -1.25, 0.25], [0.3, -0.9, 0.3, 0.3]], dtype=F64))
    assert torch.allclose(a_img, torch.tensor([[0.5, 0.0, -0.5, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=F64))


def test_stage1_advantages_with_std_division_hand_numbers():
    # --r3.std_norm (ours): each group's centred R and V divided by its unbiased std + 1e-4, as GRPO does
    rewards = torch.tensor([[2.0, 1.5, 0.0, 1.5], [1.2, 0.0, 1.2, 1.2]], dtype=F64)
    v = torch.tensor([[1.0, 0.5, 0.0, 0.5], [0.2, 0.2, 0.2, 0.2]], dtype=F64)
    a_text, a_img = stage1_advantages(rewards, v, std=True)
    # R: std sqrt(2.25 / 3) = .8660 and sqrt(1.08 / 3) = .6; V: std sqrt(.5 / 3) = .4082, and 0 (a flat group -> 0)
    s_r, s_v = 0.75**0.5 + 1e-4, (0.5 / 3) ** 0.5 + 1e-4
    want_text = [
        [0.75 / s_r, 0.25 / s_r, -1.25 / s_r, 0.25 / s_r],
        [0.3 / 0.6001, -0.9 / 0.6001, 0.3 / 0.6001, 0.3 / 0.6001],
    ]
    assert torch.allclose(a_text, torch.tensor(want_text, dtype=F64))
    assert torch.allclose(a_img, torch.tensor([[0.5 / s_v, 0.0, -0.5 / s_v, 0.0], [0.0] * 4], dtype=F64))
    # the stage-2 zeroing and the token placement carry the same numbers through
    stopped = torch.tensor([[False, False, True, False], [False] * 4])
    assert torch.allclose(stage2_advantages(rewards, v, stopped, std=True)[1], a_img.masked_fill(stopped, 0.0))


def test_stage2_advantages_hand_numbers_image_part_zeroed_where_stopped():
    rewards = torch.tensor([[2.0, 0.75, 2.0, 1.0]], dtype=F64)
    v_new = torch.tensor([[0.75, 0.25, 1.0, 0.5]], dtype=F64)
    stopped = torch.tensor([[False, False, True, False]])
    a_text, a_img = stage2_advantages(rewards, v_new, stopped)
    # R mean 5.75 / 4 = 1.4375; V_new mean .625 over all four, then the stopped member's image advantage is 0
    assert torch.allclose(a_text, torch.tensor([[0.5625, -0.6875, 0.5625, -0.4375]], dtype=F64))
    assert torch.allclose(a_img, torch.tensor([[0.125, -0.375, 0.0, -0.125]], dtype=F64))


def test_segment_advantages_put_the_stage2_hand_numbers_on_the_right_tokens():
    # the stage-2 group above as OpenRLHF trajectories: [reflect ctx | answer | refine ctx | image], member 2 stopped
    # (no image segment); R sits on the answer tokens, V_new (V_prev for member 2) is the scalar reward
    mask = torch.tensor([[[0, 1, 1, 0, 1, 1], [0, 1, 0, 0, 1, 1], [0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 1, 1]]], dtype=F64)
    r = torch.tensor([2.0, 0.75, 2.0, 1.0], dtype=F64)
    token_rewards = torch.zeros_like(mask)
    for i, n in enumerate((2, 1, 3, 2)):
        token_rewards[0, i, 1 : 1 + n] = r[i]
    v = torch.tensor([[0.75, 0.25, 1.0, 0.5]], dtype=F64)
    adv = segment_advantages(token_rewards, mask, v)
    a_text = [0.5625, -0.6875, 0.5625, -0.4375]
    a_img = [0.125, -0.375, 0.0, -0.125]
    want = torch.tensor(
        [
            [
                [0, a_text[0], a_text[0], 0, a_img[0], a_img[0]],
                [0, a_text[1], 0, 0, a_img[1], a_img[1]],
                [0, a_text[2], a_text[2], a_text[2], 0, 0],
                [0, a_text[3], a_text[3], 0, a_img[3], a_img[3]],
            ]
        ],
        dtype=F64,
    )
    assert torch.allclose(adv, want)
    # with --r3.std_norm the same segments carry the std-divided advantages
    a_text_s, a_img_s = (x[0] for x in stage1_advantages(r[None], v, std=True))
    std_adv = segment_advantages(token_rewards, mask, v, std=True)
    assert torch.allclose(std_adv[0, :, 1], a_text_s) and torch.allclose(std_adv[0, [0, 1, 3], 4], a_img_s[[0, 1, 3]])
    assert (std_adv[0, 2, 4:] == 0).all() and (std_adv[..., 0] == 0).all()


def test_advantages_reject_bad_input():
    ok = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="v contain NaN"):
        stage1_advantages(ok, torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="rewards must be"):
        stage1_advantages(torch.zeros(2, 1), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="v must be"):
        stage1_advantages(ok, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="stopped"):
        stage2_advantages(ok, ok, torch.zeros(2, 3))


def draw_counts(buf, seed=0):
    rng = np.random.default_rng(seed)
    draws = [buf.draw(rng) for _ in range(N_DRAWS)]
    return Counter((d["prompt"], d["v"]) for d in draws), draws


def test_buffer_draws_perfect_pool_with_p_015_and_uniformly_inside_pools():
    buf = TreeBuffer()
    buf.add_group("a red circle", [1.0, 1.0, 0.5, 0.25], states=[{"codes": [i]} for i in range(4)])
    counts, draws = draw_counts(buf)
    perfect = sum(n for (_, v), n in counts.items() if v == 1) / N_DRAWS
    assert abs(perfect - 0.15) < TOL
    assert abs(counts[("a red circle", 0.5)] / N_DRAWS - 0.425) < TOL  # .85 / 2
    assert abs(counts[("a red circle", 0.25)] / N_DRAWS - 0.425) < TOL
    codes = Counter(d["codes"][0] for d in draws if d["v"] == 1)
    assert abs(codes[0] / N_DRAWS - 0.075) < TOL and abs(codes[1] / N_DRAWS - 0.075) < TOL
    assert all(d["importance"] == 1.0 for d in draws)
    buf = TreeBuffer(p_perfect=0.5)
    buf.add_group("x", [1.0, 0.0])
    counts, _ = draw_counts(buf, seed=1)
    assert abs(counts[("x", 1.0)] / N_DRAWS - 0.5) < TOL


def test_buffer_falls_back_to_the_other_pool_when_one_is_empty():
    only_imperfect, only_perfect = TreeBuffer(), TreeBuffer(p_perfect=0.0)
    only_imperfect.add_group("p", [0.5, 0.0])
    only_perfect.add_group("p", [1.0, 1.0])
    rng = np.random.default_rng(2)
    assert all(only_imperfect.draw(rng)["v"] < 1 for _ in range(200))
    assert all(only_perfect.draw(rng)["v"] == 1 for _ in range(200))
    with pytest.raises(IndexError, match="empty"):
        TreeBuffer().draw(rng)


def test_spread_weighting_draws_by_group_spread_with_importance_weights():
    buf = TreeBuffer(p_perfect=0.0, weighting="spread")
    buf.add_group("a", [0.5, 0.25])  # spread .25
    buf.add_group("b", [0.75, 0.0])  # spread .75
    buf.add_group("c", [0.5, 0.5])  # spread 0: never drawn
    counts, draws = draw_counts(buf, seed=3)
    # q = spread / (2 * .25 + 2 * .75 + 0): .125 for each of a, .375 for each of b; weight 1 / (6 q)
    for key, q in ((("a", 0.5), 0.125), (("a", 0.25), 0.125), (("b", 0.75), 0.375), (("b", 0.0), 0.375)):
        assert abs(counts[key] / N_DRAWS - q) < TOL
    assert counts[("c", 0.5)] == 0
    weights = {d["prompt"]: d["importance"] for d in draws}
    assert weights["a"] == pytest.approx(1 / (6 * 0.125)) and weights["b"] == pytest.approx(1 / (6 * 0.375))
    flat = TreeBuffer(p_perfect=0.0, weighting="spread")
    flat.add_group("c", [0.5, 0.5])  # every spread 0: uniform, weight 1
    assert flat.draw(np.random.default_rng(4))["importance"] == 1.0


def test_buffer_evicts_oldest_first_and_keeps_states():
    buf = TreeBuffer(max_size=3)
    buf.add_group("p1", [0.1, 0.2], states=[{"codes": "c1"}, {"codes": "c2"}])
    buf.add_group("p2", [0.3, 0.4])
    assert len(buf) == 3
    assert [(e["prompt"], e["v"]) for e in buf.entries] == [("p1", 0.2), ("p2", 0.3), ("p2", 0.4)]
    assert buf.entries[0]["codes"] == "c2" and buf.entries[0]["spread"] == pytest.approx(0.1)


def test_buffer_rejects_bad_input_naming_the_field():
    buf = TreeBuffer()
    with pytest.raises(ValueError, match="v must"):
        buf.add_group("p", [0.5, 1.5])
    with pytest.raises(ValueError, match="v must"):
        buf.add_group("p", [float("nan"), 0.5])
    with pytest.raises(ValueError, match="states"):
        buf.add_group("p", [0.5, 0.5], states=[{}])
    with pytest.raises(ValueError, match="weighting"):
        TreeBuffer(weighting="importance")
    with pytest.raises(ValueError, match="p_perfect"):
        TreeBuffer(p_perfect=1.5)
    assert len(buf) == 0

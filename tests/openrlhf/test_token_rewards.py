"""Patch 0006 in the host's own code: per-token rewards from agents (and their scalar rewards) reach a
token-level estimator in prompt order, and its advantages come back on the right tokens of the right experiences
(plus the KL reward-to-go)."""

from types import SimpleNamespace

import pytest
import torch
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.trainer.ppo_utils.experience_maker import (
    TOKEN_ADVANTAGE_ESTIMATORS,
    RemoteExperienceMaker,
)
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

from umm_plugin.openrlhf.config import PluginConfig, R3Config, SRUMConfig
from umm_plugin.openrlhf.plugin import r3_stage, register_estimators, srum_dense

G = 2


def _maker(kl_coef=0.0):
    args = SimpleNamespace(
        reward=SimpleNamespace(clip_range=None),
        rollout=SimpleNamespace(n_samples_per_prompt=G),
        algo=SimpleNamespace(advantage=SimpleNamespace(estimator="seen", gamma=1.0)),
    )
    maker = object.__new__(RemoteExperienceMaker)  # only the advantage step runs: no Ray actors needed
    maker.strategy, maker.kl_ctl, maker.advantage_estimator = SimpleNamespace(args=args), SimpleNamespace(), "seen"
    maker.kl_ctl.value = kl_coef
    return maker


def _experience(index, token_rewards, mask, rewards=None):
    b = len(index)
    return Experience(
        action_mask=torch.tensor(mask, dtype=torch.bool),
        token_rewards=torch.tensor(token_rewards),
        kl=torch.zeros(b, len(mask[0])),
        rewards=torch.zeros(b) if rewards is None else torch.tensor(rewards),
        index=index,
        info={},
    )


def test_token_rewards_reach_the_estimator_in_prompt_order_and_come_back(monkeypatch):
    seen = {}

    def estimator(tokens, masks, rewards):
        seen["tokens"], seen["masks"], seen["rewards"] = tokens.clone(), masks.clone(), rewards.clone()
        return tokens * 10, {"probe": tokens.sum(-1)}

    monkeypatch.setitem(TOKEN_ADVANTAGE_ESTIMATORS, "seen", estimator)
    # samples 2, 0 in one experience (width 3), samples 1, 3 in another (width 2): prompts are (0, 1) and (2, 3)
    a = _experience([2, 0], [[0.0, 3.0, 4.0], [0.0, 1.0, 0.0]], [[0, 1, 1], [0, 1, 0]], [0.2, 0.0])
    b = _experience([1, 3], [[0.0, 2.0], [0.0, 5.0]], [[0, 1], [0, 1]], [0.1, 0.3])
    out = _maker().compute_advantages_and_returns([a, b])
    want_tokens = torch.tensor([[[0, 1, 0], [0, 2, 0]], [[0, 3, 4], [0, 5, 0]]], dtype=torch.float)
    torch.testing.assert_close(seen["tokens"], want_tokens)
    torch.testing.assert_close(seen["rewards"], torch.tensor([[0.0, 0.1], [0.2, 0.3]]))
    assert seen["masks"][1, 0].tolist() == [0, 1, 1] and seen["masks"][0, 1].tolist() == [0, 1, 0]
    torch.testing.assert_close(out[0].advantages, torch.tensor([[0.0, 30.0, 40.0], [0.0, 10.0, 0.0]]))
    torch.testing.assert_close(out[1].advantages, torch.tensor([[0.0, 20.0], [0.0, 50.0]]))
    torch.testing.assert_close(out[0].info["probe"], torch.tensor([7.0, 1.0]))
    assert out[0].kl is None and torch.equal(out[0].returns, out[0].advantages)


def test_kl_in_the_reward_is_added_as_reward_to_go(monkeypatch):
    monkeypatch.setitem(TOKEN_ADVANTAGE_ESTIMATORS, "seen", lambda t, m, r: (torch.zeros_like(t), {}))
    e = [_experience([0], [[0.0, 1.0, 1.0]], [[0, 1, 1]]), _experience([1], [[0.0, 1.0, 1.0]], [[0, 1, 1]])]
    e[0].kl = torch.tensor([[0.0, 0.5, 0.25]])
    out = _maker(kl_coef=2.0).compute_advantages_and_returns(e)
    torch.testing.assert_close(out[0].advantages, torch.tensor([[0.0, -1.5, -0.5]]))


def test_missing_token_rewards_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(TOKEN_ADVANTAGE_ESTIMATORS, "seen", lambda t, m, r: (t, {}))
    e = [_experience([0], [[0.0, 1.0]], [[0, 1]]), _experience([1], [[0.0, 1.0]], [[0, 1]])]
    e[1].token_rewards = None
    with pytest.raises(ValueError, match="needs an agent that returns token_rewards"):
        _maker().compute_advantages_and_returns(e)


def test_samples_generator_aligns_token_rewards_with_the_action_mask():
    response = {
        "observation_tokens": [5, 6, 7, 8],
        "action_ranges": [(2, 4)],
        "token_rewards": [0.0, 0.0, 0.25, 0.75],
        "rollout_log_probs": None,
        "prompt": "p",
        "label": "l",
        "reward": 0.5,
    }
    exp = SamplesGenerator._process_response_into_experience(None, response, max_len=16)
    assert exp.action_mask.tolist() == [[0, 1, 1]] and exp.token_rewards.tolist() == [[0.0, 0.25, 0.75]]
    response["token_rewards"] = [0.0, 1.0]
    with pytest.raises(ValueError, match="2 token_rewards for 4 observation tokens"):
        SamplesGenerator._process_response_into_experience(None, response, max_len=16)


def test_srum_dense_is_registered_token_level_and_masks_prompt_tokens():
    register_estimators(PluginConfig(srum=SRUMConfig(eps=0.5)))
    estimator = TOKEN_ADVANTAGE_ESTIMATORS["srum_dense"]
    assert estimator.func is srum_dense and estimator.keywords["cfg"].eps == 0.5  # bound to the run's config
    tokens = torch.tensor([[[7.0, 0.2, 0.9], [7.0, 0.8, 0.9]]])
    mask = torch.tensor([[[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]])
    adv, logs = srum_dense(tokens, mask, torch.zeros(1, 2), SRUMConfig())
    assert adv[0, :, 0].abs().sum() == 0 and adv[0, 0, 1] < 0 < adv[0, 1, 1]
    torch.testing.assert_close(logs["zero_advantage_tokens"], torch.tensor([[0.5, 0.5]]))


def test_r3_stage_divides_by_the_group_std_only_with_the_flag():
    # one stage-1 group of 4: the plan's reward R on token 1, V as the scalar reward, the image on token 3 (token 2
    # is the image prefix the model did not write, so the two action segments are apart)
    tokens = torch.tensor([[[0.0, r, 0.0, 0.0] for r in (2.0, 1.0, 1.0, 1.0)]])
    mask = torch.tensor([[[0.0, 1.0, 0.0, 1.0]] * 4])
    v = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    adv, _ = r3_stage(tokens, mask, v, R3Config())  # the authors' default: centred only
    torch.testing.assert_close(adv[0, :, 3], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    adv, _ = r3_stage(tokens, mask, v, R3Config(std_norm=True))
    s = 0.5 + 1e-4  # the unbiased std of (1, 0, 0, 0)
    torch.testing.assert_close(adv[0, :, 3], torch.tensor([0.75, -0.25, -0.25, -0.25]) / s)
    torch.testing.assert_close(adv[0, :, 1], torch.tensor([0.75, -0.25, -0.25, -0.25]) / s)
    assert adv[..., [0, 2]].abs().sum() == 0

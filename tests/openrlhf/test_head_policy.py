"""The diffusion-head policy (patches/0007 extension): the rollout's SDE render and the actor's training pass agree
exactly, the loss has OpenRLHF's sample-mean normalisation and the image advantage of each sample, a step moves
the log-prob the way the advantage says, and a checkpoint resumes exactly."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from openrlhf.trainer.ppo_utils.experience import Experience

from umm_plugin.models.umm import UMM
from umm_plugin.openrlhf.head_policy import HeadPolicy
from umm_plugin.openrlhf.r3_agent import AgentExecutor

STRATEGY = SimpleNamespace(args=SimpleNamespace(actor=SimpleNamespace(max_norm=1.0)))


@pytest.fixture(scope="module")
def rollouts(pretrained_dir):
    """Two groups of 3 renders with the head's SDE step, as the R3 executor makes them."""
    ex = AgentExecutor()
    ex.cfg = dataclasses.replace(ex.cfg, head=dataclasses.replace(ex.cfg.head, rl=True))
    engine = SimpleNamespace(umm=UMM.from_pretrained(pretrained_dir), syncs=0)
    g = torch.Generator().manual_seed(0)
    lay = engine.umm.layout
    out = []
    for group in (object(), object()):  # one sampling-params object per host call
        for _ in range(3):
            codes = torch.randint(0, lay.num_codes, (lay.grid**2,), generator=g)
            pixels, record = ex.render(engine, group, codes)
            assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
            out.append((codes, record))
    return engine.umm, out


def experience(umm, rollouts, advantages):
    """A batch whose actions are 3 text tokens then the image tokens; text tokens get advantage 9 (never used)."""
    lay = umm.layout
    rows = [[1, 2, 3] + lay.tokens(codes) for codes, _ in rollouts]
    seq = torch.tensor([[0, 0] + r for r in rows])
    n_actions = len(rows[0])
    adv = torch.full((len(rows), n_actions), 9.0)
    adv[:, 3:] = torch.tensor(advantages)[:, None]
    return Experience(
        sequences=seq,
        action_mask=torch.ones(len(rows), n_actions, dtype=torch.bool),
        advantages=adv,
        mm_train_inputs=[r for _, r in rollouts],
    )


def test_groups_share_noise_and_step_and_the_training_pass_scores_the_rollout_again(pretrained_dir, rollouts):
    umm, out = rollouts
    rec = [r for _, r in out]
    for a, b in ((0, 1), (0, 2), (3, 4)):
        assert torch.equal(rec[a]["head_t_index"], rec[b]["head_t_index"])
    policy = HeadPolicy(STRATEGY, pretrained_dir)
    exp = experience(umm, out, [1.0, -1.0, 0.0, 0.5, -0.5, 0.0])
    _, metrics = policy.loss(exp, {"global_batch_size": torch.tensor(6.0), "dp_size": 1})
    assert abs(metrics["ratio"].item() - 1) < 1e-5  # same weights: the rollout's log-prob is recomputed exactly
    assert metrics["kl"].item() == pytest.approx(0.0, abs=1e-12)  # the policy starts at the reference


def test_loss_is_a_sample_mean_of_the_clipped_surrogate_with_each_image_advantage(pretrained_dir, rollouts):
    umm, out = rollouts
    policy = HeadPolicy(STRATEGY, pretrained_dir)
    exp = experience(umm, out, [1.0, -1.0, 0.0, 0.5, -0.5, 2.0])
    assert torch.equal(policy.image_advantages(exp, list(range(6))), torch.tensor([1.0, -1.0, 0.0, 0.5, -0.5, 2.0]))
    exp.mm_train_inputs[5] = None  # a member without an image (R3: it stopped) counts in the mean, as zero
    loss, _ = policy.loss(exp, {"global_batch_size": torch.tensor(6.0), "dp_size": 1})
    # ratio 1 at the start: the surrogate is -A per image, the KL 0; weight 2 * (-(1 - 1 + 0 + .5 - .5)) / 6 = 0
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    exp.advantages[:, 3:] = 1.0
    loss, _ = policy.loss(exp, {"global_batch_size": torch.tensor(6.0), "dp_size": 1})
    assert loss.item() == pytest.approx(2.0 * -5 / 6, abs=1e-5)


def test_a_step_raises_the_log_prob_of_positive_advantages_and_lowers_negative_ones(pretrained_dir, rollouts):
    umm, out = rollouts
    policy = HeadPolicy(STRATEGY, pretrained_dir)
    policy.cfg = dataclasses.replace(policy.cfg, kl=0.0)
    adv = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0]
    exp = experience(umm, out, adv)
    before = _sample_logps(policy, out)
    loss, _ = policy.loss(exp, {"global_batch_size": torch.tensor(6.0), "dp_size": 1})
    loss.backward()
    policy.step()
    delta = _sample_logps(policy, out) - before
    assert (delta[::2] > 0).all() and (delta[1::2] < 0).all(), delta


def _sample_logps(policy, out):
    from umm_plugin.algos.flow_grpo import sde_step_with_logprob

    rec = [r for _, r in out]
    x_t, x_next, t, a, codes = (torch.cat([r[k] for r in rec]) for k in ("head_x_t", "head_x_next", "head_t_index",
                                                                          "head_a", "head_codes"))  # fmt: skip
    with torch.no_grad():
        v = policy.head(x_t, policy.scheduler.sigmas[t], codes)
        return sde_step_with_logprob(policy.scheduler, v, t, x_t, "r3", a.double(), prev_sample=x_next)[1]


def test_checkpoint_state_resumes_exactly(pretrained_dir, rollouts):
    umm, out = rollouts
    info = {"global_batch_size": torch.tensor(6.0), "dp_size": 1}

    def train(policy, steps):
        for _ in range(steps):
            loss, _ = policy.loss(experience(umm, out, [1.0, -1.0, 0.5, -0.5, 0.25, -0.25]), info)
            loss.backward()
            policy.step()

    a = HeadPolicy(STRATEGY, pretrained_dir)
    train(a, 2)
    b = HeadPolicy(STRATEGY, pretrained_dir)
    train(b, 1)
    state = b.state_dict()
    c = HeadPolicy(STRATEGY, pretrained_dir)
    c.load_state_dict(state)
    train(c, 1)
    assert all(torch.equal(p, q) for p, q in zip(a.head.parameters(), c.head.parameters()))
    assert any(
        not torch.equal(p, q)
        for p, q in zip(a.head.parameters(), HeadPolicy(STRATEGY, pretrained_dir).head.parameters())
    )

import math

import pytest
import torch

from umm_plugin.algos.flow_grpo import (
    kl_flow_grpo_script,
    kl_gaussian_exact,
    kl_r3_image,
    sde_schedule,
    sde_step_with_logprob,
    shared_group_draws,
)
from umm_plugin.models.diffusion_head import make_scheduler

F64 = torch.float64


def scheduler(steps):
    s = make_scheduler()
    s.set_timesteps(steps)
    return s


def test_flow_grpo_step_matches_hand_numbers_and_its_closed_form():
    s = scheduler(10)  # sigmas 1, .889, .778, .667, .556, .445, ...: step 4 goes t = .556 -> .445, dt = -.111
    x, v, x1 = (torch.tensor([[c]], dtype=F64) for c in (1.0, 0.5, 0.9))
    _, logp, mean, std = sde_step_with_logprob(s, v, 4, x, a=0.7, prev_sample=x1)
    # eta^2 = .49 * .556 / .444; eta^2 dt / 2t = .49 * -.111 / (2 * .444) = -.06125; eta^2 (1 - t) / 2t = .245
    # mean = 1 * (1 - .06125) + .5 * 1.245 * -.111 = .8696525; std^2 = eta^2 * .111 = .0681100
    assert mean.item() == pytest.approx(0.8696525, abs=1e-5)
    assert std.item() == pytest.approx(math.sqrt(0.49 * 0.556 / 0.444 * 0.111), abs=1e-5)
    # log N(.9; .8696525, .0681100) = -.0303475^2 / (2 * .06811) - log .260978 - log sqrt(2 pi) = .417617
    assert logp.item() == pytest.approx(0.417617, abs=1e-5)


def test_sampled_step_has_the_stated_mean_and_std():
    s, n = scheduler(10), 20000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 2, 2, generator=g, dtype=F64).expand(n, -1, -1, -1)
    v = torch.randn(1, 3, 2, 2, generator=g, dtype=F64).expand(n, -1, -1, -1)
    for form in ("flow_grpo", "r3"):
        x1, _, mean, std = sde_step_with_logprob(s, v, 2, x, eta_form=form, generator=g)
        # Standard errors: std / sqrt(n) for the mean, std / sqrt(2n) for the std; 5 of them is a 1-in-10^6 miss.
        se = std.item() / math.sqrt(n)
        assert ((x1.mean(0) - mean[0]).abs() < 5 * se).all()
        assert ((x1.std(0) - std).abs() < 5 * std.item() / math.sqrt(2 * n)).all()


def test_log_prob_is_the_gaussian_density_with_and_without_constants():
    s = scheduler(20)
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(4, 3, 4, 4, generator=g, dtype=F64), torch.randn(4, 3, 4, 4, generator=g, dtype=F64)
    t_index = torch.tensor([0, 3, 7, 18])  # per-sample steps, t == 1 included
    for form in ("flow_grpo", "r3"):
        x1, logp, mean, std = sde_step_with_logprob(s, v, t_index, x, eta_form=form, generator=g)
        ref = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x1).mean((1, 2, 3))
        assert torch.allclose(logp, ref, atol=1e-5, rtol=0)
        _, logp_r3, _, _ = sde_step_with_logprob(s, v, t_index, x, eta_form=form, prev_sample=x1, constants=False)
        assert torch.allclose(logp_r3, -0.5 * ((x1 - mean) ** 2 / std**2).mean((1, 2, 3)), atol=1e-12, rtol=0)
        # The constants depend on (t, a) only, so they cancel in any ratio between two policies' log-probs.
        const = (-torch.log(std) - 0.5 * math.log(2 * math.pi)).flatten()
        assert torch.allclose(logp - logp_r3, const, atol=1e-12, rtol=0)


def test_r3_drift_is_flow_grpo_drift_written_with_the_score():
    s = scheduler(20)
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(2, 8, generator=g, dtype=F64), torch.randn(2, 8, generator=g, dtype=F64)
    for i in (1, 5, 12):
        t, t_next = s.sigmas[i].double(), s.sigmas[i + 1].double()
        _, _, mean, std = sde_step_with_logprob(s, v, i, x, eta_form="r3", a=0.7)
        eta = 0.7 * math.sqrt(t / (1 - min(t, 0.95)))
        x0 = x - t * v
        score = -(x - (1 - t) * x0) / t**2
        dt_r3 = t - t_next  # R3 writes dt > 0
        assert torch.allclose(mean, x - (v - 0.5 * eta**2 * score) * dt_r3, atol=1e-12, rtol=0)
        assert std.item() == pytest.approx(eta * math.sqrt(dt_r3), abs=1e-12)
        dt = t_next - t  # Flow-GRPO's closed form with the same eta is the same number
        fg = x * (1 + eta**2 * dt / (2 * t)) + v * (1 + eta**2 * (1 - t) / (2 * t)) * dt
        assert torch.allclose(mean, fg, atol=1e-12, rtol=0)


def test_eta_forms_agree_below_095_and_match_above_with_rescaled_a():
    s = scheduler(40)  # sigmas[1] = 1 - .999/39 = .974 > .95
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(2, 8, generator=g, dtype=F64), torch.randn(2, 8, generator=g, dtype=F64)
    x1 = torch.randn(2, 8, generator=g, dtype=F64)
    for i in (2, 10, 30):  # t <= .95: same eta, same everything
        fg = sde_step_with_logprob(s, v, i, x, "flow_grpo", 0.7, prev_sample=x1)
        r3 = sde_step_with_logprob(s, v, i, x, "r3", 0.7, prev_sample=x1)
        assert all(torch.allclose(p, q, atol=1e-12, rtol=0) for p, q in zip(fg, r3))
    # t = .974 (1 - t = .026) and t = 1 (Flow-GRPO's guard puts 1 - sigmas[1] = .026 in the denominator too):
    # R3 with a' = a sqrt(.05 / .026) reproduces Flow-GRPO exactly.
    denom = 1 - s.sigmas[1].item()
    for i in (0, 1):
        _, _, eta_fg = sde_schedule(s, i, "flow_grpo", 0.7)
        _, _, eta_r3 = sde_schedule(s, i, "r3", 0.7)
        assert eta_fg.item() > eta_r3.item()
        fg = sde_step_with_logprob(s, v, i, x, "flow_grpo", 0.7, prev_sample=x1)
        r3 = sde_step_with_logprob(s, v, i, x, "r3", 0.7 * math.sqrt(0.05 / denom), prev_sample=x1)
        assert all(torch.allclose(p, q, atol=1e-10, rtol=0) for p, q in zip(fg, r3))
    _, _, eta = sde_schedule(scheduler(10), 0, "flow_grpo", 0.7)
    assert eta.item() == pytest.approx(0.7 / math.sqrt(1 - 0.889), abs=1e-4)  # finite at t == 1


def test_zero_noise_is_the_schedulers_euler_step():
    g = torch.Generator().manual_seed(4)
    x, v = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    for form in ("flow_grpo", "r3"):
        for i in (0, 4, 9):
            s = scheduler(10)
            x1, _, mean, std = sde_step_with_logprob(s, v, i, x, eta_form=form, a=0.0, generator=g)
            euler = s.step(v, s.timesteps[i], x).prev_sample
            assert torch.allclose(mean, euler, atol=1e-5, rtol=0) and torch.equal(x1, mean) and std.item() == 0


def test_kl_helpers_hand_numbers_and_script_is_exact_times_minus_dt():
    mean, ref = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=F64), torch.zeros(2, 2, dtype=F64)
    # mean((mu - mu_ref)^2) = 2.5 and 0; std .5: 2.5 / (2 * .25) = 5
    assert torch.allclose(kl_flow_grpo_script(mean, ref, 0.5), torch.tensor([5.0, 0.0], dtype=F64))
    assert torch.allclose(kl_gaussian_exact(mean, ref, 0.5), torch.tensor([5.0, 0.0], dtype=F64))
    assert torch.allclose(kl_r3_image(mean, ref, 0.5), torch.tensor([10.0, 0.0], dtype=F64))
    s = scheduler(10)
    g = torch.Generator().manual_seed(5)
    x, v, v_ref = (torch.randn(3, 2, 4, generator=g, dtype=F64) for _ in range(3))
    t, t_next, eta = sde_schedule(s, 3, "flow_grpo", 0.7)
    _, _, mu, std = sde_step_with_logprob(s, v, 3, x)
    _, _, mu_ref, _ = sde_step_with_logprob(s, v_ref, 3, x)
    script, exact = kl_flow_grpo_script(mu, mu_ref, eta.double()), kl_gaussian_exact(mu, mu_ref, std)
    assert torch.allclose(script, exact * (t - t_next).double(), atol=1e-12, rtol=0)
    # Exact KL of two Gaussians with equal std, checked against torch.distributions (per dim, then averaged).
    d = torch.distributions
    ref_kl = d.kl_divergence(d.Normal(mu, std.expand_as(mu)), d.Normal(mu_ref, std.expand_as(mu))).mean((1, 2))
    assert torch.allclose(exact, ref_kl, atol=1e-12, rtol=0)


def test_group_members_share_initial_noise_and_sde_index():
    g = torch.Generator().manual_seed(6)
    t_index, noise = shared_group_draws(500, 4, (3, 2, 2), 0, 14, generator=g)
    assert t_index.shape == (2000,) and noise.shape == (2000, 3, 2, 2)
    t_g, n_g = t_index.view(500, 4), noise.view(500, 4, -1)
    assert (t_g == t_g[:, :1]).all() and (n_g == n_g[:, :1]).all()
    assert set(t_g[:, 0].tolist()) == set(range(15))  # inclusive on both ends
    assert not torch.equal(n_g[0, 0], n_g[1, 0])
    t_edit, _ = shared_group_draws(200, 2, (1,), 0, 1, generator=g)
    assert set(t_edit.tolist()) == {0, 1}


def test_bad_arguments_raise():
    s = scheduler(10)
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="t_index"):
        sde_step_with_logprob(s, x, 10, x)
    with pytest.raises(ValueError, match="eta_form"):
        sde_step_with_logprob(s, x, 0, x, eta_form="sde")
    with pytest.raises(ValueError, match="low <= high"):
        shared_group_draws(2, 2, (1,), 3, 1)


def test_sde_render_is_euler_ode_but_one_sde_step_scored_again_exactly():
    from umm_plugin.algos.flow_grpo import sde_render

    s = scheduler(4)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(3, 3, 4, 4, generator=g, dtype=F64)
    velocity = lambda x, sigma, w=w: torch.tanh(x * w) + sigma[:, None, None, None]  # noqa: E731
    noise, t_index = torch.randn(3, 3, 4, 4, generator=g, dtype=F64), torch.tensor([0, 1, 2])
    x0, x_t, x_next, logp = sde_render(velocity, s, noise, t_index, "r3", 0.7, torch.Generator().manual_seed(3))
    for row in range(3):  # reference: the scheduler's own Euler step everywhere but the SDE step
        x = noise[row : row + 1]
        s.set_timesteps(4)  # resets the scheduler's step counter
        for i, t in enumerate(s.timesteps):
            v = velocity(x, s.sigmas[i : i + 1], w[row : row + 1])
            if i == t_index[row]:
                assert torch.allclose(x, x_t[row : row + 1], atol=1e-6, rtol=0)
                s.step(v, t, x)  # only advances the scheduler's step counter
                x, v = x_t[row : row + 1], velocity(x_t[row : row + 1], s.sigmas[i : i + 1], w[row : row + 1])
                x, lp, _, _ = sde_step_with_logprob(s, v, i, x, "r3", 0.7, prev_sample=x_next[row : row + 1])
                assert lp.item() == pytest.approx(logp[row].item(), abs=1e-12)
            else:
                x = s.step(v, t, x).prev_sample
        assert torch.allclose(x, x0[row : row + 1], atol=1e-6, rtol=0)  # the scheduler steps in float32
    assert not torch.equal(x_next[0], x_t[0])  # the SDE step added noise


def test_clipped_surrogate_hand_numbers():
    from umm_plugin.algos.flow_grpo import clipped_surrogate

    logp = torch.log(torch.tensor([1.0, 1.5, 0.5, 1.5, 0.5]))
    adv = torch.tensor([2.0, 1.0, 1.0, -1.0, -1.0])
    # ratio 1: -2; ratio 1.5, A>0: clipped at 1.2 -> -1.2; ratio .5, A>0: -.5 (min keeps the unclipped);
    # ratio 1.5, A<0: 1.5 (unclipped is larger); ratio .5, A<0: clipped at .8 -> .8
    expected = torch.tensor([-2.0, -1.2, -0.5, 1.5, 0.8])
    assert torch.allclose(clipped_surrogate(logp, torch.zeros(5), adv, 0.2), expected, atol=1e-6)

"""The diffusion policy's math: one SDE denoising step with its log-prob, KL estimates, group-shared draws.

Functions take a diffusers `FlowMatchEulerDiscreteScheduler` after `set_timesteps(n)` (x_t = (1 - t) x0 + t noise,
t = sigma in [0, 1], the head predicts v = noise - x0) and never edit diffusers classes. A step goes from
t = sigmas[i] to t_next = sigmas[i + 1], dt = t_next - t < 0 (Flow-GRPO's sign; R3 writes dt > 0 and flips it).

Both authors discretise the same reverse-time SDE (Euler-Maruyama): with x0^ = x - t v and
score = -(x - (1 - t) x0^) / t^2 = -(x + (1 - t) v) / t,
    mean = x + (v - eta^2 / 2 * score) * dt,  std = eta * sqrt(-dt).
Expanding the score gives Flow-GRPO's x (1 + eta^2 dt / 2t) + v (1 + eta^2 (1 - t) / 2t) dt term for term, and
R3's x - (v - eta^2 / 2 * score) dt_R3 with dt_R3 = -dt. So `eta_form` changes only the noise level eta(t):
- "flow_grpo": eta = a sqrt(t / (1 - t)); at t == 1 (sigmas[0] with shift 1) the 1 - t in the denominator uses
  the next-lower sigma, sigmas[1], as Flow-GRPO does, so the first step stays finite.
- "r3": eta = a sqrt(t / (1 - min(t, 0.95))).
They are identical for t <= 0.95 and the same a; above 0.95, R3 with a' = a sqrt(0.05 / (1 - t)) (with
1 - sigmas[1] for t == 1) reproduces Flow-GRPO exactly. a = 0 is the scheduler's deterministic Euler step.

Log-prob: Flow-GRPO includes the Gaussian constants (-log std - log sqrt(2 pi)); R3 writes -1/2 mean((x' - mu)^2 /
std^2). `constants` switches between them; std depends only on (t, a), never on the weights, so the constants
cancel in the GRPO ratio exp(logp_theta - logp_old) and in logp - logp_ref, and both choices train identically.
"""

import math

import torch

ETA_FORMS = ("flow_grpo", "r3")
SDE_WINDOWS = {"generation": (0, 14), "editing": (0, 1)}  # R3: the one SDE step index ~ U[low, high], inclusive
R3_A = {"generation": 0.7, "editing": 1.0}
R3_T_CAP = 0.95


def sde_schedule(scheduler, t_index, eta_form: str = "flow_grpo", a: float = 0.7):
    """(t, t_next, eta) for step index t_index (int -> 0-dim tensors, LongTensor [B] -> [B] tensors)."""
    if eta_form not in ETA_FORMS:
        raise ValueError(f"eta_form={eta_form!r}: use one of {', '.join(ETA_FORMS)}")
    sigmas = scheduler.sigmas.double()  # so float64 callers get eta to float64 precision
    idx = torch.as_tensor(t_index, device=sigmas.device)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) + 1 >= len(sigmas)):
        raise ValueError(f"t_index must lie in [0, {len(sigmas) - 2}] for {len(sigmas) - 1} steps, got {t_index}")
    t, t_next = sigmas[idx], sigmas[idx + 1]
    if eta_form == "flow_grpo":
        # t / (1 - t) is infinite at t == 1; Flow-GRPO puts the next-lower sigma in the denominator there.
        eta = a * torch.sqrt(t / (1 - torch.where(t == 1, sigmas[1], t)))
    else:
        eta = a * torch.sqrt(t / (1 - t.clamp(max=R3_T_CAP)))
    return t, t_next, eta


def sde_step_with_logprob(
    scheduler,
    v: torch.Tensor,
    t_index,
    x: torch.Tensor,
    eta_form: str = "flow_grpo",
    a: float = 0.7,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    constants: bool = True,
):
    """One reverse SDE step x_t -> x_{t_next}: (prev_sample, log_prob [B], mean, std).

    v, x [B, ...]; t_index an int or a LongTensor [B] (groups may sit at different steps). Without prev_sample,
    x' = mean + std * eps with eps drawn from `generator`; with it, log_prob scores the given x' (the training
    pass). log_prob is the mean over non-batch dims of log N(x'; mean, std^2), constants included iff `constants`.
    std broadcasts against x ([] or [B, 1, ...]); with a = 0 it is 0 and log_prob is NaN (no density).
    """
    t, t_next, eta = sde_schedule(scheduler, t_index, eta_form, a)
    shape = (-1,) + (1,) * (x.dim() - 1) if t.dim() else ()
    t, t_next, eta = (s.to(x.device, x.dtype).reshape(shape) for s in (t, t_next, eta))
    dt = t_next - t
    score = -(x + (1 - t) * v) / t
    mean = x + (v - 0.5 * eta**2 * score) * dt
    std = eta * torch.sqrt(-dt)
    if prev_sample is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        prev_sample = mean + std * noise
    log_prob = -((prev_sample - mean) ** 2) / (2 * std**2)
    if constants:
        log_prob = log_prob - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return prev_sample, log_prob.mean(dim=tuple(range(1, x.dim()))), mean, std


def kl_flow_grpo_script(mean: torch.Tensor, mean_ref: torch.Tensor, std_t) -> torch.Tensor:
    """[B] KL as Flow-GRPO's training script computes it: mean((mu - mu_ref)^2) / (2 eta^2), eta WITHOUT sqrt(-dt).

    std_t is `sde_schedule`'s eta. It equals the exact Gaussian KL times (-dt): a step-size-dependent rescaling of
    beta, which is what the authors' beta values were tuned against.
    """
    return ((mean - mean_ref) ** 2 / (2 * torch.as_tensor(std_t) ** 2)).mean(dim=tuple(range(1, mean.dim())))


def kl_gaussian_exact(mean: torch.Tensor, mean_ref: torch.Tensor, std) -> torch.Tensor:
    """[B] exact KL(N(mu, std^2) || N(mu_ref, std^2)) per dim, averaged: mean((mu - mu_ref)^2 / (2 std^2))."""
    return ((mean - mean_ref) ** 2 / (2 * torch.as_tensor(std) ** 2)).mean(dim=tuple(range(1, mean.dim())))


def kl_r3_image(mean: torch.Tensor, mean_ref: torch.Tensor, std) -> torch.Tensor:
    """[B] R3's image KL mean((mu - mu_ref)^2 / std^2), std the step's full std: twice `kl_gaussian_exact`."""
    return ((mean - mean_ref) ** 2 / torch.as_tensor(std) ** 2).mean(dim=tuple(range(1, mean.dim())))


def shared_group_draws(
    num_groups: int, group_size: int, noise_shape, low: int, high: int, generator: torch.Generator | None = None
):
    """(t_index [P*G] long, initial noise [P*G, *noise_shape]), constant within each group of G consecutive rows.

    Rows p*G .. p*G + G - 1 are prompt p's group (the [P, G] layout of the advantages). Every member starts from
    the same noise and takes its one SDE step at the same index ~ U[low, high] inclusive (R3: `SDE_WINDOWS`), so
    the members differ only by their AR tokens and the SDE step's own noise: reward differences inside a group are
    then caused by what the policy chose, not by a luckier starting point.
    """
    if not 0 <= low <= high or num_groups < 1 or group_size < 1:
        raise ValueError(
            f"need 0 <= low <= high and positive sizes, got {low=}, {high=}, {num_groups=}, {group_size=}"
        )
    t_index = torch.randint(low, high + 1, (num_groups,), generator=generator)
    noise = torch.randn((num_groups, *noise_shape), generator=generator)
    return t_index.repeat_interleave(group_size), noise.repeat_interleave(group_size, dim=0)


@torch.no_grad()
def sde_render(velocity, scheduler, noise: torch.Tensor, t_index, eta_form="flow_grpo", a=0.7, generator=None):
    """Denoise `noise` [B, ...] along `scheduler.sigmas` (after `set_timesteps`): Euler ODE steps except one SDE step
    per row at t_index (an int or LongTensor [B]), the rollout side of Flow-GRPO with one trained step.

    velocity(x, sigma [B]) -> v. Returns (x0, x_t, x_next, log_prob [B]): (x_t, x_next) is each row's SDE pair, the
    state the training pass scores again with `sde_step_with_logprob(..., prev_sample=x_next)`.
    """
    sigmas = scheduler.sigmas.to(noise.device, noise.dtype)
    t_index = torch.as_tensor(t_index, device=noise.device).expand(len(noise))
    x, x_t, x_next = noise, torch.empty_like(noise), torch.empty_like(noise)
    log_prob = torch.zeros(len(noise), device=noise.device, dtype=noise.dtype)
    for i in range(len(sigmas) - 1):
        v = velocity(x, sigmas[i].expand(len(x)))
        step = x + (sigmas[i + 1] - sigmas[i]) * v  # the scheduler's Euler step
        sde = t_index == i
        if sde.any():
            prev, lp, _, _ = sde_step_with_logprob(scheduler, v[sde], i, x[sde], eta_form, a, generator=generator)
            x_t[sde], x_next[sde], log_prob[sde], step[sde] = x[sde], prev, lp, prev
        x = step
    return x, x_t, x_next, log_prob


def clipped_surrogate(log_prob, old_log_prob, advantages, clip: float = 0.2) -> torch.Tensor:
    """[B] PPO's clipped loss -min(r A, clip(r, 1 - clip, 1 + clip) A), r = exp(log_prob - old_log_prob)."""
    ratio = torch.exp(log_prob - old_log_prob)
    return torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))

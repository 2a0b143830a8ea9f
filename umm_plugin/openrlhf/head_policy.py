"""The diffusion head as a second policy, trained beside the AR backbone in OpenRLHF's actor (patches/0007).

`--umm.head.rl true` registers this actor extension in every worker. The rollout executor renders each image with
Flow-GRPO's one SDE step (`algos.flow_grpo.sde_render`; the group shares the initial noise and the step index) and
returns the step's (x_t, x_next, log-prob, codes) in `mm_train_inputs`. Here, in each actor rank, the head's loss on
those samples is PPO's clipped surrogate on the step's log-prob ratio with the sample's image advantage (the mean of
its advantages over its image tokens: R3's A_img, GvU's group-normalised reward), plus beta times R3's image KL to
the frozen starting head's mean, times `--umm.head.weight` (authors: 2.0), added to the actor's loss. Its own AdamW
steps at each optimizer-step boundary; the engines get its weights as `umm_head.*` with every sync.

Normalisation: the sum over a micro-batch's image samples divided by the optimizer step's sample count (OpenRLHF's
sample-mean normaliser), so a sample without an image (an R3 member that stopped) counts as a zero-advantage image,
as the authors zero A_img on stop. Data parallel only: grads are averaged over all ranks.
"""

import copy
import json
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers import FlowMatchEulerDiscreteScheduler

from umm_plugin.algos.flow_grpo import clipped_surrogate, kl_r3_image, sde_step_with_logprob
from umm_plugin.models.diffusion_head import DiffusionHead
from umm_plugin.openrlhf.config import plugin_config

NAME = "umm_head"
KEYS = ("head_x_t", "head_x_next", "head_t_index", "head_a", "head_logp", "head_codes")


class HeadPolicy:
    def __init__(self, strategy, pretrain):
        from deepspeed.accelerator import get_accelerator

        self.cfg, self.max_norm = plugin_config().umm.head, strategy.args.actor.max_norm

        path = Path(pretrain)
        meta = json.loads((path / "umm_config.json").read_text())
        self.image_ids = (meta["image_offset"], meta["image_offset"] + meta["num_codes"])
        self.device = get_accelerator().current_device_name()
        self.head = DiffusionHead.from_pretrained(path / "diffusion_head").to(self.device).train()
        self.ref = copy.deepcopy(self.head).eval().requires_grad_(False)  # a few hundred K parameters
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")
        self.scheduler.set_timesteps(self.cfg.steps)
        # The actor's Adam settings (OpenRLHF defaults: betas 0.9/0.95, eps 1e-8, no weight decay), its own lr.
        self.opt = torch.optim.AdamW(self.head.parameters(), lr=self.cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def named_parameters(self):
        return self.head.named_parameters()

    def image_advantages(self, experience, rows) -> torch.Tensor:
        """[len(rows)] each sample's mean advantage over its generated image tokens."""
        seq = experience.sequences[rows, -experience.action_mask.shape[1] :]
        lo, hi = self.image_ids
        img = ((seq >= lo) & (seq < hi) & experience.action_mask[rows].bool()).float()
        if (img.sum(1) == 0).any():
            raise ValueError("a sample has head rollout data but no generated image tokens among its actions")
        return (experience.advantages[rows].float() * img).sum(1) / img.sum(1)

    def loss(self, experience, loss_batch_info):
        rows = [i for i, d in enumerate(experience.mm_train_inputs) if d and "head_x_t" in d]
        if not rows:
            return None, {}
        x_t, x_next, t_index, a, old, codes = (
            torch.cat([experience.mm_train_inputs[i][k] for i in rows]).to(self.device) for k in KEYS
        )
        adv = self.image_advantages(experience, rows).to(self.device)
        sigma = self.scheduler.sigmas.to(self.device)[t_index]
        eta_form = self.cfg.eta_form
        _, logp, mean, std = sde_step_with_logprob(
            self.scheduler, self.head(x_t, sigma, codes), t_index, x_t, eta_form, a.double(), prev_sample=x_next
        )
        with torch.no_grad():
            v_ref = self.ref(x_t, sigma, codes)
            _, _, mean_ref, _ = sde_step_with_logprob(
                self.scheduler, v_ref, t_index, x_t, eta_form, a.double(), prev_sample=x_next
            )
        kl = kl_r3_image(mean, mean_ref, std)
        per_sample = clipped_surrogate(logp, old, adv, self.cfg.clip) + self.cfg.kl * kl
        if loss_batch_info is None:  # dynamic batching: a mean over this micro-batch
            norm = torch.tensor(float(len(experience.action_mask)))
        else:
            norm = loss_batch_info["global_batch_size"] / loss_batch_info["dp_size"]
        ratio = torch.exp(logp - old).detach()
        metrics = {
            "loss": per_sample.detach().mean(),
            "kl": kl.detach().mean(),
            "ratio": ratio.mean(),
            "clip_frac": ((ratio - 1).abs() > self.cfg.clip).float().mean(),
        }
        return self.cfg.weight * per_sample.sum() / norm.to(self.device), metrics

    def step(self) -> None:
        params = [p for p in self.head.parameters() if p.grad is not None]
        if not params:
            return
        if dist.is_initialized() and dist.get_world_size() > 1:
            for p in params:
                dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
        torch.nn.utils.clip_grad_norm_(params, self.max_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def save(self, path) -> None:
        self.head.save_pretrained(Path(path) / "diffusion_head")

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "optimizer": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.opt.load_state_dict(state["optimizer"])

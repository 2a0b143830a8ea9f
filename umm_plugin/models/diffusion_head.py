"""The diffusion head: renders pixels from image-token codes with a rectified-flow model (diffusers parts).

A tiny `diffusers` FluxTransformer2DModel predicts the flow for x_t = (1 - sigma) x0 + sigma noise (the
FlowMatchEulerDiscreteScheduler convention). Each 4x4 pixel patch is one token; the embedding of the patch's code is
concatenated to it (Flux-Fill-style channel conditioning) and the code embeddings are also the joint-attention
context, placed on the same grid by RoPE ids. A code's embedding is its codebook entry (the tokenizer's patch, what
a VQ decoder reads as z_q) plus a learned part. It plays X-Omni's FLUX decoder at toy size; it has its own code
embedding so RL on the AR backbone never moves the decoder. The math that trains or samples it lives in functions
taking the scheduler (`flow_matching_loss`, `render_codes`), never in edits of diffusers classes.
"""

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config

SIGMA_MIN = 1e-3


class DiffusionHead(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        num_codes: int = 385,
        grid: int = 8,
        patch: int = 4,
        embed_dim: int = 64,
        num_layers: int = 1,
        num_single_layers: int = 2,
        num_heads: int = 2,
        head_dim: int = 32,
    ):
        super().__init__()
        self.embed = torch.nn.Embedding(num_codes, embed_dim - 3 * patch * patch)
        # The visual tokenizer's codebook entry of every code (its patch in pixels, [-1, 1]), the way a VQ decoder
        # reads z_q: a persistent buffer set by `set_codebook`, saved with the head, not trained.
        self.register_buffer("codebook", torch.zeros(num_codes, 3 * patch * patch))
        self.transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=3 * patch * patch + embed_dim,
            out_channels=3 * patch * patch,
            num_layers=num_layers,
            num_single_layers=num_single_layers,
            attention_head_dim=head_dim,
            num_attention_heads=num_heads,
            joint_attention_dim=embed_dim,
            pooled_projection_dim=embed_dim,
            axes_dims_rope=(head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8),
        )
        torch.nn.init.zeros_(self.transformer.proj_out.weight)
        torch.nn.init.zeros_(self.transformer.proj_out.bias)
        g = torch.arange(grid)
        ids = torch.stack([torch.zeros(grid * grid), g.repeat_interleave(grid), g.repeat(grid)], -1)
        self.register_buffer("pos_ids", ids.float(), persistent=False)

    @torch.no_grad()
    def set_codebook(self, vq) -> None:
        """Copy the visual tokenizer's codebook (decoded patch of every code) into the head."""
        patches = vq.decode(torch.arange(vq.num_codes)[:, None].expand(-1, vq.grid * vq.grid))
        self.codebook.copy_(patchify(to_pixels(patches), vq.patch)[:, 0])

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """x_t [B, 3, H, W], sigma [B] in [0, 1], codes [B, grid*grid] -> velocity [B, 3, H, W]."""
        codes = codes.to(self.device)
        e = torch.cat([self.codebook[codes], self.embed(codes)], -1)
        out = self.transformer(
            hidden_states=torch.cat([patchify(x_t, self.config.patch), e], -1),
            encoder_hidden_states=e,
            pooled_projections=e.mean(1),
            timestep=sigma,
            img_ids=self.pos_ids,
            txt_ids=self.pos_ids,
        ).sample
        # x-prediction as a residual over the codebook render, converted to the velocity the scheduler steps with.
        # proj_out starts at zero, so an untrained head already decodes codes exactly and training learns only what
        # the codes do not say; a tiny head cannot learn to copy 48 channels exactly in the CPU minutes we have.
        x0 = unpatchify(out + self.codebook[codes], self.config.patch)
        return (x_t - x0) / sigma.clamp(min=SIGMA_MIN)[:, None, None, None]


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), C*p*p], patches in the visual tokenizer's row-major order."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    b, n, d = x.shape
    g, c = int(n**0.5), d // (p * p)
    return x.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * p, g * p)


def make_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def to_pixels(images) -> torch.Tensor:
    """[B, H, W, 3] uint8 -> [B, 3, H, W] float in [-1, 1]."""
    return torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def from_pixels(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def flow_matching_loss(head, scheduler, codes, images, generator=None, weight=None) -> torch.Tensor:
    """Rectified-flow loss with logit-normal sigma (SD3/SRUM); `weight` [B, 1|3, H, W] weights pixels (SRUM maps)."""
    x0 = to_pixels(images).to(head.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    sigma = torch.sigmoid(torch.randn(len(x0), generator=generator, device=x0.device))[:, None, None, None]
    x_t = (1 - sigma) * x0 + sigma * noise
    v = head(x_t, sigma.flatten(), codes)
    err = (v - (noise - x0)) ** 2
    return (err * weight).mean() if weight is not None else err.mean()


@torch.no_grad()
def render_codes(head, scheduler, codes, steps: int = 8, generator=None) -> np.ndarray:
    """Euler ODE sampling from noise to pixels conditioned on codes; returns [B, H, W, 3] uint8."""
    size = head.config.grid * head.config.patch
    x = torch.randn((len(codes), 3, size, size), generator=generator, device=head.device)
    scheduler.set_timesteps(steps, device=head.device)
    for t in scheduler.timesteps:
        v = head(x, (t / scheduler.config.num_train_timesteps).expand(len(x)), codes)
        x = scheduler.step(v, t, x).prev_sample
    return from_pixels(x)

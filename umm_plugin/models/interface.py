"""The one model interface that everything above `models/` is to use: what GvU, SRUM and R3 need of a unified model.

A unified model draws an image as a sequence of discrete image tokens after a generation prompt, decodes them to
pixels, and understands images (pixels) it is shown. Implementations: the embedded ShapesWorld model (`umm.py`) and
Janus / Janus-Pro on `transformers` (`janus.py`). Images cross the interface as pixels, `uint8 [B, H, W, 3]`, so a
judge reads what a user would see whatever the model's own image encoder is (Janus understands through SigLIP, never
its VQ codes). Sampling settings come from one `SamplingConfig`; the teacher-forced log-probs of an image use the
same vocabulary mask and the same classifier-free guidance as the sampler, so a rollout's log-probs can be scored
again with gradients and agree with the sampler's.
"""

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from umm_plugin.models.generation import SamplingConfig


@runtime_checkable
class UnifiedModel(Protocol):
    image_tokens: int  # tokens of one image (Janus-Pro at 384 px: 576)
    image_size: int  # pixels per side of a decoded image
    describe: str  # the instruction before GvU's judged text ("Describe the image.")
    ask: str  # the yes/no question about a prompt, with a {prompt} field ("Is this {prompt}?")
    device: torch.device  # where its weights are: a sampler's generators must be on it

    def generation_prompt(self, prompt: str) -> list[int]:
        """Token ids after which the first image token is sampled (the chat template and begin-of-image)."""
        ...

    def unconditional_prompt(self, prompt: str) -> list[int]:
        """The CFG unconditional form of `generation_prompt(prompt)` (Janus: the same length, all but BOS and
        begin-of-image padded)."""
        ...

    def sample_image_tokens(
        self, prompts: list[str], sampling: SamplingConfig, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """[B, image_tokens] image token codes (0 .. codebook size - 1), KV-cached, CFG as extra batch rows."""
        ...

    def image_logprobs(self, prompts: list[str], codes: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
        """[B, image_tokens] log p(code_j | prompt, codes_<j) under the distribution the sampler draws from (CFG
        combination and temperature included, before top-k / min-p), in one teacher-forced pass, with gradients."""
        ...

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """[B, image_tokens] codes -> uint8 [B, image_size, image_size, 3] pixels."""
        ...

    def text_logprobs(
        self, images: np.ndarray, instruction: str, texts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Understanding: per-token log p(text_j | image_i, instruction, text_<j) for each (image, text) pair, in one
        teacher-forced pass; returns (logp [B, L], mask [B, L]) with the text's end token included as its last
        scored token. GvU's reward is exp(mean over the mask)."""
        ...

    def yes_no(self, images: np.ndarray, questions: list[str]) -> torch.Tensor:
        """[B] p(yes) - p(no) of the answer's first token to each question about its image (SRUM, R3)."""
        ...

    def answer(self, images: np.ndarray, questions: list[str], max_new_tokens: int = 64) -> list[str]:
        """Greedy free-text answers (R3's reflection, captions)."""
        ...

    def save_pretrained(self, path) -> None: ...


def load_model(path, device="cpu", dtype=None):
    """The model in a directory, by what the directory holds: a ShapesWorld UMM (`umm_config.json`, CPU only) or a
    Janus checkpoint (`config.json` with model_type janus) in `dtype` (None: as saved) on `device`."""
    import json
    from pathlib import Path

    from umm_plugin.models.umm import ModelError

    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"model directory {path} not found")
    if (path / "umm_config.json").is_file():
        from umm_plugin.models.umm import UMM

        if str(device) != "cpu":
            raise ModelError(f"{path} is a ShapesWorld model: it runs on CPU (device {device} asked for)")
        return UMM.from_pretrained(path)
    config = path / "config.json"
    if not config.is_file():
        raise ModelError(f"{path}: no model directory here (neither umm_config.json nor config.json)")
    try:
        kind = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        raise ModelError(f"{config} is not a JSON object; re-save the model") from None
    if kind == "janus":
        from umm_plugin.models.janus import JanusUMM

        janus = JanusUMM.from_pretrained(path, **({"dtype": dtype} if dtype is not None else {}))
        janus.model.to(device)
        return janus
    raise ModelError(f"{config}: model_type {kind!r} is not supported; supported: the ShapesWorld UMM, janus")

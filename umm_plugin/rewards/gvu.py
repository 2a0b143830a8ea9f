"""GvU's token-level intrinsic reward: how likely the model finds the prompt, given its own image.

r = exp(mean_j log p(T_j | chat(image tokens, describe-instruction), T_<j)), the geometric mean of the prompt's
token probabilities. The authors' code runs one forward pass per prompt token without a KV cache; one teacher-
forced pass gives the same numbers (tests hold it to 1e-5) and is what this computes. `include_eos` adds the end
token to T, so the caption must *end* where the prompt ends and extra objects cost reward (the authors leave it
out; leaving it out lets the policy scatter extra objects: docs/design.md, "Prototype findings"). The judge is
whatever backbone is passed: the policy itself (faithful) or the reference (same weights with LoRA off).
"""

import torch

from umm_plugin.models.generation import continuation_logprobs
from umm_plugin.models.umm import DESCRIBE


def gvu_reward(model, codes: torch.Tensor, prompts: list[str], include_eos: bool = False, backbone=None):
    """[B] rewards in (0, 1] for image codes [B, grid*grid] and their prompts; `backbone` defaults to the model's."""
    backbone = model.backbone if backbone is None else backbone
    eos = [model.tokenizer.eos_token_id] if include_eos else []
    prefixes = [model.chat(c, DESCRIBE) for c in codes]
    targets = [model.ids(p) + eos for p in prompts]
    logp, mask = continuation_logprobs(backbone, prefixes, targets, pad_id=model.tokenizer.pad_token_id)
    return torch.exp(logp.sum(-1) / mask.sum(-1))

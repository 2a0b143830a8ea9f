"""The ShapesWorld model behind the `UnifiedModel` interface, on a random-init tiny UMM: the teacher-forced image
log-probs are the sampler's distribution (checked against unpadded per-prompt forwards, CFG on and off), and the
understanding calls on pixels equal the code-level rewards the recipes use."""

import numpy as np
import pytest
import torch

from umm_plugin.eval import evaluate_geneval
from umm_plugin.models.generation import SamplingConfig
from umm_plugin.models.interface import UnifiedModel
from umm_plugin.rewards.gvu import gvu_reward
from umm_plugin.rewards.srum import yes_no_scores
from umm_plugin.worlds.grammar import make_prompts

PROMPTS = ["a photo of a red circle", "a photo of two blue squares", "a photo of a green triangle"]


def _direct_logits(umm, prompt: str, codes: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """[grid * grid, num_codes] guided logits of each code, from whole unpadded sequences (one per row)."""
    lay = umm.layout
    at = torch.tensor([r * (lay.grid + 1) + c for r in range(lay.grid) for c in range(lay.grid)])
    out = []
    for row in (umm.generation_prompt(prompt), umm.unconditional_prompt(prompt)):
        seq = torch.tensor([row + lay.tokens(codes)])
        with torch.no_grad():
            logits = umm.backbone(seq).logits[
                0, len(row) - 1 + at, lay.image_offset : lay.image_offset + lay.num_codes
            ]
        out.append(logits.float())
    cond, uncond = out
    return uncond + cfg_scale * (cond - uncond) if cfg_scale != 1.0 else cond


def test_the_shapesworld_model_implements_the_interface(tiny_umm):
    assert isinstance(tiny_umm, UnifiedModel)
    codes = tiny_umm.sample_image_tokens(PROMPTS[:1], SamplingConfig(), torch.Generator().manual_seed(0))
    assert codes.shape == (1, tiny_umm.image_tokens)
    assert tiny_umm.decode(codes).shape == (1, tiny_umm.image_size, tiny_umm.image_size, 3)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_image_logprobs_are_the_samplers_distribution(tiny_umm, cfg_scale):
    greedy = tiny_umm.sample_image_tokens(PROMPTS, SamplingConfig(temperature=0, cfg_scale=cfg_scale))
    drawn = tiny_umm.sample_image_tokens(
        PROMPTS, SamplingConfig(temperature=0.7, cfg_scale=cfg_scale), torch.Generator().manual_seed(1)
    )
    for codes, temperature in ((greedy, 0), (drawn, 0.7)):
        got = tiny_umm.image_logprobs(PROMPTS, codes, SamplingConfig(temperature=temperature, cfg_scale=cfg_scale))
        for i, p in enumerate(PROMPTS):
            logits = _direct_logits(tiny_umm, p, codes[i], cfg_scale)
            if temperature == 0:  # greedy codes are the argmax of the teacher-forced logits
                assert torch.equal(logits.argmax(-1), codes[i])
            want = torch.log_softmax(logits / (temperature or 1.0), -1).gather(-1, codes[i][:, None]).squeeze(-1)
            torch.testing.assert_close(got[i].detach(), want, atol=1e-5, rtol=0)
    loss = tiny_umm.image_logprobs(PROMPTS, drawn, SamplingConfig(cfg_scale=cfg_scale)).sum()
    loss.backward()
    assert tiny_umm.backbone.get_input_embeddings().weight.grad.abs().sum() > 0
    tiny_umm.backbone.zero_grad(set_to_none=True)


def test_understanding_on_pixels_equals_the_code_level_rewards(tiny_umm):
    codes = tiny_umm.sample_image_tokens(PROMPTS, SamplingConfig(), torch.Generator().manual_seed(2))
    pixels = tiny_umm.decode(codes)
    assert torch.equal(tiny_umm.vq.encode(pixels), codes)  # the render reads back as its codes
    with torch.no_grad():
        logp, mask = tiny_umm.text_logprobs(pixels, tiny_umm.describe, PROMPTS)
    reward = torch.exp((logp * mask).sum(-1) / mask.sum(-1))
    torch.testing.assert_close(reward, gvu_reward(tiny_umm, codes, PROMPTS, include_eos=True), atol=1e-6, rtol=0)
    questions = [f"is this {p} ?" for p in PROMPTS]
    torch.testing.assert_close(tiny_umm.yes_no(pixels, questions), yes_no_scores(tiny_umm, codes, questions))
    answers = tiny_umm.answer(pixels, questions, max_new_tokens=4)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)


def test_geneval_evaluation_runs_on_the_shapesworld_model(tiny_umm):
    metas = make_prompts(6, "eval", 0)
    report, images = evaluate_geneval(tiny_umm, metas, seed=0)
    assert images.shape == (6, tiny_umm.image_size, tiny_umm.image_size, 3)
    assert report["by_tag"]["overall"]["n"] == 6 and 0 < report["by_tag"]["overall"]["gvu_reward"] <= 1
    assert all(0 <= r["yes_no_pass"] <= 1 for r in report["per_prompt"])
    assert np.isfinite([r["gvu_reward"] for r in report["per_prompt"]]).all()


def test_load_model_places_a_janus_and_keeps_shapesworld_on_cpu(pretrained_dir, tiny_janus_dir):
    from umm_plugin.models.interface import load_model
    from umm_plugin.models.umm import ModelError

    janus = load_model(tiny_janus_dir, "cpu", torch.bfloat16)  # what a GPU engine asks for, on the CPU here
    assert isinstance(janus, UnifiedModel) and janus.device == torch.device("cpu")
    assert {p.dtype for p in janus.model.parameters()} == {torch.bfloat16}
    assert load_model(pretrained_dir).device == torch.device("cpu")
    with pytest.raises(ModelError, match="is a ShapesWorld model: it runs on CPU"):
        load_model(pretrained_dir, "cuda")

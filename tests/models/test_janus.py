"""Janus on `transformers` behind the `UnifiedModel` interface, on a tiny random-init Janus written once per module:
the checkpoint layout reloads through the Auto classes, the sampler and the teacher-forced log-probs are one
distribution (with and without CFG), gradients reach the generation head and LoRA weights, and GvU's one-pass
reward equals a token-by-token computation."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, DynamicCache

from umm_plugin.models.generation import SamplingConfig, left_pad
from umm_plugin.models.interface import UnifiedModel
from umm_plugin.models.janus import DESCRIBE, TINY_MAX_PARAMS, JanusUMM, janus_for_rl_class

PROMPTS = ["a photo of a red stop sign", "two blue circles"]  # different lengths: left padding is exercised


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small runs fastest on one thread; two threads on two busy shared cores ran this file 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tiny_janus_dir):
    return tiny_janus_dir


@pytest.fixture(scope="module")
def janus(tiny_dir):
    return JanusUMM.from_pretrained(tiny_dir)


def test_tiny_janus_has_the_checkpoint_layout_and_reloads_through_the_auto_classes(tiny_dir, janus):
    names = {p.name for p in tiny_dir.iterdir()}
    assert names >= {"config.json", "model.safetensors", "generation_config.json", "processor_config.json"}
    assert names >= {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    assert type(model).__name__ == "JanusForConditionalGeneration" and type(processor).__name__ == "JanusProcessor"
    n = sum(p.numel() for p in model.parameters())
    assert 300_000 < n < TINY_MAX_PARAMS
    for name, value in janus.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    assert isinstance(janus, UnifiedModel)
    assert (janus.image_tokens, janus.image_size) == (16, 32)
    assert model.generation_config.generation_kwargs["boi_token_id"] == janus.boi_id


def test_cli_writes_the_same_seeded_model(tmp_path, tiny_dir, capsys):
    from umm_plugin.cli import main

    main(["janus", "tiny", "--out", str(tmp_path), "--seed", "0"])
    assert "parameters" in capsys.readouterr().out
    assert (tmp_path / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    assert (tmp_path / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()


def test_generation_prompt_is_janus_chat_format_and_cfg_row_keeps_bos_and_boi(janus):
    ids = janus.generation_prompt(PROMPTS[0])
    text = janus.tokenizer.decode(ids)
    assert text == "<｜begin▁of▁sentence｜><|User|>: a photo of a red stop sign\n\n<|Assistant|>:<begin_of_image>"
    uncond = janus.unconditional_prompt(PROMPTS[0])
    assert len(uncond) == len(ids) and uncond[0] == janus.bos_id and uncond[-1] == janus.boi_id
    assert set(uncond[1:-1]) == {janus.pad_id}
    with pytest.raises(ValueError, match="empty prompt"):
        janus.generation_prompt("  ")


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_greedy_codes_are_the_argmax_of_the_teacher_forced_distribution(janus, cfg_scale):
    sampling = SamplingConfig(temperature=0, cfg_scale=cfg_scale)
    codes, logp = janus.sample_image_tokens(PROMPTS, sampling, return_logprobs=True)
    assert codes.shape == (2, janus.image_tokens) and codes.dtype == torch.long
    with torch.no_grad():
        dist = janus.image_distribution(PROMPTS, codes, sampling)
    assert torch.equal(dist.argmax(-1), codes)
    torch.testing.assert_close(logp, dist.max(-1).values, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "sampling",
    [SamplingConfig(), SamplingConfig(cfg_scale=3.0), SamplingConfig(temperature=0.7, top_k=8, cfg_scale=2.0)],
)
def test_sampler_logprobs_equal_image_logprobs(janus, sampling):
    gen = torch.Generator().manual_seed(0)
    codes, logp = janus.sample_image_tokens(PROMPTS * 2, sampling, gen, return_logprobs=True)
    assert len(set(map(tuple, codes.tolist()))) > 1  # sampled, not one fixed draw
    with torch.no_grad():
        again = janus.image_logprobs(PROMPTS * 2, codes, sampling)
    torch.testing.assert_close(again, logp, rtol=0, atol=1e-5)


def test_greedy_cfg_loop_matches_transformers_generate(janus):
    # transformers' own image loop, with the DynamicCache that avoids its static-cache TypeError in 5.15.
    ids = torch.tensor([janus.generation_prompt(PROMPTS[0])])
    cache = DynamicCache(config=janus.model.config.text_config)
    ref = janus.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        generation_mode="image",
        do_sample=False,
        guidance_scale=3.0,
        past_key_values=cache,
    )
    ours = janus.sample_image_tokens(PROMPTS[:1], SamplingConfig(temperature=0, cfg_scale=3.0))
    assert torch.equal(ours, ref)


def test_gradient_of_image_logprobs_reaches_the_generation_head(tiny_dir):
    janus = JanusUMM.from_pretrained(tiny_dir)
    sampling = SamplingConfig(cfg_scale=2.0)
    codes = janus.sample_image_tokens(PROMPTS, sampling, torch.Generator().manual_seed(1))
    janus.image_logprobs(PROMPTS, codes, sampling).sum().backward()
    inner = janus.model.model
    for param in (inner.generation_head.vision_head.weight, inner.generation_aligner.fc1.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert inner.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert inner.vision_model.embeddings.patch_embedding.weight.grad is None  # generation never reads SigLIP


def test_gradient_of_image_logprobs_reaches_lora_weights(tiny_dir):
    from peft import LoraConfig, get_peft_model

    janus = JanusUMM.from_pretrained(tiny_dir)
    targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    get_peft_model(janus.model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))  # adapters go in in place
    sampling = SamplingConfig(cfg_scale=3.0)
    codes = janus.sample_image_tokens(PROMPTS, sampling, torch.Generator().manual_seed(2))
    janus.image_logprobs(PROMPTS, codes, sampling).sum().backward()
    lora = {n: p for n, p in janus.model.named_parameters() if "lora_B" in n}
    assert len(lora) == 2 * 7 and all("language_model" in n for n in lora)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values())
    assert all(p.grad is None for n, p in janus.model.named_parameters() if "lora_" not in n)


def test_gvu_one_pass_reward_equals_a_token_by_token_loop(janus):
    codes = janus.sample_image_tokens(PROMPTS + ["yes"], SamplingConfig(), torch.Generator().manual_seed(3))
    images = janus.decode(codes)
    texts = ["a photo of a red stop sign", "two blue circles", "yes"]
    with torch.no_grad():
        logp, mask = janus.text_logprobs(images, DESCRIBE, texts)
    reward = torch.exp((logp * mask).sum(1) / mask.sum(1))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DESCRIBE}]}]
    prompt = janus.processor.apply_chat_template(messages, add_generation_prompt=True)
    expected = []
    for image, text in zip(images, texts):
        enc = janus.processor(text=[prompt], images=[image], generation_mode="text")
        target = janus.tokenizer(" " + text, add_special_tokens=False).input_ids + [janus.tokenizer.eos_token_id]
        steps = []
        for j, token in enumerate(target):  # one uncached forward per scored token
            ids = torch.cat([enc.input_ids, torch.tensor([target[:j]], dtype=torch.long)], 1)
            with torch.no_grad():
                logits = janus.model(input_ids=ids, pixel_values=enc.pixel_values).logits[0, -1]
            steps.append(torch.log_softmax(logits.float(), -1)[token])
        expected.append(torch.stack(steps).mean().exp())
    scored = [len(janus.tokenizer(" " + t, add_special_tokens=False).input_ids) + 1 for t in texts]  # text + end
    assert mask.sum(1).tolist() == scored
    torch.testing.assert_close(reward, torch.stack(expected), rtol=0, atol=1e-5)


def test_decode_yes_no_and_answer(janus):
    codes = janus.sample_image_tokens(PROMPTS, SamplingConfig(), torch.Generator().manual_seed(4))
    images = janus.decode(codes)
    assert images.dtype == np.uint8 and images.shape == (2, 32, 32, 3)
    questions = ["Is this a photo of a red stop sign?", "Is it blue?"]
    score = janus.yes_no(images, questions)
    assert score.shape == (2,) and ((score >= -1) & (score <= 1)).all()
    one_by_one = torch.cat([janus.yes_no(images[i : i + 1], questions[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(score, one_by_one, rtol=0, atol=1e-6)  # left padding changes nothing
    big = np.random.default_rng(0).integers(0, 256, (2, 64, 48, 3), dtype=np.uint8)  # resized and padded by SigLIP's
    assert janus.yes_no(big, questions).shape == (2,)  # image processor
    answers = janus.answer(images, questions, max_new_tokens=5)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_the_rl_view_scores_a_rollout_as_the_sampler_drew_it_and_trains_the_generation_head(tiny_dir, janus):
    # What OpenRLHF's actor computes on a rollout sequence (prompt ids, then text_vocab + code per image token):
    # log_softmax(logits)[t, token t+1] at image positions equals the sampler's log-probs (no CFG, as RL rolls out).
    rl = janus_for_rl_class().from_pretrained(tiny_dir).float()
    sampling = SamplingConfig(temperature=1.0)
    codes, sampled = janus.sample_image_tokens(
        PROMPTS, sampling, torch.Generator().manual_seed(4), return_logprobs=True
    )
    vocab = rl.config.text_config.vocab_size
    rows = [janus.generation_prompt(p) + [vocab + int(c) for c in row] for p, row in zip(PROMPTS, codes)]
    ids, mask = left_pad(rows, janus.pad_id)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = rl(ids, attention_mask=mask, position_ids=pos).logits
    assert logits.shape[-1] == vocab + rl.config.vq_config.num_embeddings
    logp = torch.log_softmax(logits, -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(logp[:, -janus.image_tokens :], sampled, atol=1e-5, rtol=0)
    logp[:, -janus.image_tokens :].sum().backward()
    assert rl.model.generation_head.proj_out.weight.grad.abs().sum() > 0
    # text positions are scored by the language model head over the text vocabulary only
    assert torch.isfinite(logp[:, -janus.image_tokens - 3 : -janus.image_tokens]).all()
    assert (torch.softmax(logits[:, 2], -1)[:, vocab:].sum(-1) == 0).all()


def test_text_sampler_with_an_image_is_transformers_greedy_generate_and_stops_at_a_string(janus):
    pixels = janus.decode(janus.sample_image_tokens(PROMPTS[:1], SamplingConfig(), torch.Generator().manual_seed(1)))
    ids, mask, values = janus._understand(pixels, [DESCRIBE])
    want = janus.model.generate(
        input_ids=ids, attention_mask=mask, pixel_values=values, max_new_tokens=8, do_sample=False
    )[0, ids.shape[1] :].tolist()
    got = janus.sample_text(ids, mask, values, 8)[0]
    assert got == want[: len(got)] and (len(got) == 8 or got[-1] == janus.eos_id)
    stop = janus.tokenizer.decode(got[:3])[-2:]  # a string the greedy text ends with after its third token
    k = next(k for k in range(1, 9) if janus.tokenizer.decode(got[:k]).endswith(stop))
    assert janus.sample_text(ids, mask, values, 8, stop_strings=[stop])[0] == got[:k]
    with pytest.raises(ValueError, match="image placeholders but no pixel values"):
        janus.sample_text(ids, mask, None, 2)


def test_r3_turns_are_janus_chat_turns(janus):
    tok = janus.tokenizer
    plan = tok.decode(janus.reason_prompt("a photo of a dog"))
    assert plan.startswith(tok.bos_token + "<|User|>: a photo of a dog\n") and plan.endswith("<|Assistant|>: <think>")
    pixels = np.zeros((32, 32, 3), np.uint8)
    reflect = janus.reflect_prompt(pixels, "a photo of a dog")
    assert reflect.count(janus.model.config.image_token_id) == 16  # the tiny SigLIP's 4 x 4 features
    assert tok.decode(reflect).endswith(
        '"a photo of a dog". Say inside <think> </think> what it shows, then answer '
        '"no further edit needed" if it matches, else say what to change.\n\n'
        "<|Assistant|>: <think>"
    )
    turn = janus.refine_turn("a photo of a dog", "make it brown")
    assert tok.decode(turn) == "<|User|>: Draw a photo of a dog again. make it brown\n\n<|Assistant|>:<begin_of_image>"


def test_the_rl_view_reads_an_understanding_turn_with_its_pixels(tiny_dir, janus):
    # R3's reflection on Janus: the actor scores the answer given the picture through SigLIP (pixel values in
    # OpenRLHF's mm_train_inputs), as Janus's own forward does; other pixels give other log-probs.
    rl = janus_for_rl_class().from_pretrained(tiny_dir).float()
    codes = janus.sample_image_tokens(PROMPTS, SamplingConfig(), torch.Generator().manual_seed(2))
    pixels = janus.decode(codes)
    rows = [janus.reflect_prompt(p, q) + janus._ids(" <think> a dog </think>") for p, q in zip(pixels, PROMPTS)]
    ids, mask = left_pad(rows, janus.pad_id)
    values = janus.pixel_values(pixels)
    logp = torch.log_softmax(rl(ids, attention_mask=mask, pixel_values=values).logits, -1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    own = janus.model(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=values).logits
    torch.testing.assert_close(logp[..., : own.shape[-1]], torch.log_softmax(own.float(), -1), atol=1e-5, rtol=0)
    swapped = torch.log_softmax(rl(ids, attention_mask=mask, pixel_values=values.flip(0)).logits, -1)
    assert (swapped - logp)[mask.bool()].abs().max() > 1e-4
    with pytest.raises(ValueError, match="image placeholders but no pixel values"):
        rl(ids, attention_mask=mask)


def test_janus_weights_with_nan_are_named_at_load(tiny_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from umm_plugin.models.umm import ModelError

    shutil.copytree(tiny_dir, tmp_path / "j")
    weights = load_file(tmp_path / "j" / "model.safetensors")
    weights["model.generation_head.vision_head.weight"][0, 0] = float("inf")
    save_file(weights, tmp_path / "j" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="weight model.generation_head.vision_head.weight holds NaN or inf"):
        JanusUMM.from_pretrained(tmp_path / "j")

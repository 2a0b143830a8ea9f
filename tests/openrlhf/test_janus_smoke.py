"""`recipes/gvu.sh --model <tiny Janus> --prompts <GenEval file of COCO classes> --smoke` through the real
`python -m openrlhf.cli.train_ppo_ray` with `--lora`: it completes and logs GvU's reward, the engine's `policy/` is a
Janus checkpoint that reloads through the Auto classes, the engine holds the actor's weights after the last sync,
training moved the weights, and LoRA stays on the language model. `recipes/srum.sh --model` runs SRUM online the same
way, and `recipes/r3.sh --model` R3's two stages, fully fine-tuned, with the self and the openai judge (the
reflection's picture reaching the actor as pixel values: the RL view refuses placeholders without them; the actor's
own save a Janus checkpoint equal to the engine's)."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

pytestmark = pytest.mark.slow  # end-to-end recipe runs in a subprocess

REPO = Path(__file__).resolve().parents[2]


def _recipe(recipe, model, prompts, out, *flags):
    cmd = ["bash", f"recipes/{recipe}.sh", "--model", str(model), "--smoke"]
    cmd += [*(["--prompts", str(prompts)] if prompts else []), *flags]
    env = {**os.environ, "UMM_PYTHON": sys.executable, "UMM_OUT": str(out)}
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]


@pytest.fixture(scope="module")
def smoke(tiny_janus_dir, coco_file, tmp_path_factory):
    """GvU with LoRA (what a real-size Janus needs); fully fine-tuned Janus runs are the SRUM and R3 tests below.
    Placed as `--gpu` places it (`--train.colocate_all`: the engine in actor rank 0's bundle), on CPU."""
    out = tmp_path_factory.mktemp("janus_smoke_lora")
    _recipe("gvu", tiny_janus_dir, coco_file, out, "--lora", "--", "--train.colocate_all")
    return out


def test_janus_smoke_logs_the_gvu_reward(smoke):
    out = smoke
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["global_step"] for s in steps] == [1, 2]
    for s in steps:
        assert 0 < s["gvu_reward"] <= 1 and s["reward"] == pytest.approx(s["gvu_reward"])
        assert s["response_length"] == 16  # one tiny-Janus image: 4 x 4 codes
    curve = (out / "curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,reward,yes_no_pass_single_object") and len(curve) == 3
    assert (out / "grid_00002.png").is_file()


def test_janus_smoke_policy_is_the_actors_janus_checkpoint(smoke, tiny_janus_dir):
    out = smoke
    policy = AutoModelForImageTextToText.from_pretrained(out / "policy")
    assert type(policy).__name__ == "JanusForConditionalGeneration"
    assert type(AutoProcessor.from_pretrained(out / "policy")).__name__ == "JanusProcessor"
    base = load_file(tiny_janus_dir / "model.safetensors")
    engine = {k: v for k, v in policy.state_dict().items() if k in base}
    actor = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_janus_dir), out / "actor")
    actor = actor.merge_and_unload().state_dict()
    targets = json.loads((out / "actor" / "adapter_config.json").read_text())["target_modules"]
    assert targets and all(t.startswith("model.language_model.layers.") for t in targets)
    for name, value in engine.items():  # the sync is exact: the engine saved what the actor trained
        torch.testing.assert_close(value, actor[name], atol=1e-6, rtol=0, msg=name)
    moved = {k for k in engine if not torch.equal(engine[k], base[k])}
    assert any(k.startswith("model.language_model.layers.") for k in moved)
    assert all(k.startswith("model.language_model.layers.") for k in moved)  # the adapter's layers, nothing else


def _fully_fine_tuned(base_dir, out, policy):
    """A fully fine-tuned run moved the generation head, and the actor's own save is a Janus checkpoint holding the
    engine's (synced) weights."""
    base = load_file(base_dir / "model.safetensors")
    assert not torch.equal(
        policy["model.generation_head.vision_head.weight"], base["model.generation_head.vision_head.weight"]
    )
    config = json.loads((out / "actor" / "config.json").read_text())
    assert config["architectures"] == ["JanusForConditionalGeneration"]
    assert type(AutoProcessor.from_pretrained(out / "actor")).__name__ == "JanusProcessor"
    actor = AutoModelForImageTextToText.from_pretrained(out / "actor").state_dict()
    for name in base:  # the sync is exact: the engine saved what the actor trained
        torch.testing.assert_close(policy[name], actor[name], atol=1e-6, rtol=0, msg=name)


def test_srum_online_on_janus_trains_through_train_ppo_ray(tiny_janus_dir, coco_file, tmp_path):
    _recipe("srum", tiny_janus_dir, coco_file, tmp_path)
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [s["global_step"] for s in steps] == [1, 2]
    for s in steps:  # the map's mean is the logged reward; regions, found and claimed come from the GenEval lines
        assert 0 <= s["srum_map_mean"] <= 1 and s["reward"] == pytest.approx(s["srum_map_mean"])
        assert s["srum_regions"] >= 1 and 0 <= s["srum_found"] <= 1 and 0 < s["srum_claimed"] <= 1
    policy = AutoModelForImageTextToText.from_pretrained(tmp_path / "policy").state_dict()
    _fully_fine_tuned(tiny_janus_dir, tmp_path, policy)


def test_srum_offline_on_janus_trains_its_image_tokens_by_the_weighted_nll(tiny_janus_dir, coco_file, tmp_path):
    _recipe("srum", tiny_janus_dir, coco_file, tmp_path, "--offline")
    rows = (tmp_path / "curve.csv").read_text().splitlines()
    assert rows[0] == "step,gvu_reward,yes_no_pass,seconds,loss_backbone" and len(rows) == 3
    assert float(rows[2].split(",")[-1]) > 0  # the map-weighted NLL of the image tokens
    trained = AutoModelForImageTextToText.from_pretrained(tmp_path / "model").state_dict()
    base = load_file(tiny_janus_dir / "model.safetensors")
    moved = {k for k in base if not torch.equal(trained[k], base[k])}
    assert "model.generation_head.vision_head.weight" in moved
    assert not any(k.startswith(("model.vision_model.", "model.vqmodel.")) for k in moved)  # no gradient reaches them


def _r3_steps(out):
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["r3_stage"] for s in steps] == [1.0, 2.0]  # stage 1 (plan + picture), then reflect + refine
    for s in steps:
        assert s["reward"] == pytest.approx(s["r3_v"]) and 0 <= s["r3_format"] <= 1 and s["kl"] >= 0
    policy = AutoModelForImageTextToText.from_pretrained(out / "policy")
    assert type(policy).__name__ == "JanusForConditionalGeneration"
    return steps, policy.state_dict()


def test_r3_on_janus_with_the_self_judge_trains_through_train_ppo_ray(tiny_janus_dir, tmp_path):
    _recipe("r3", tiny_janus_dir, None, tmp_path, "--judge", "self")  # ShapesWorld's prompts, as GenEval lines
    steps, _ = _r3_steps(tmp_path)
    assert all(s["r3_v"] in (0.0, 1.0) for s in steps)  # the recipe's binary verdict


def test_r3_on_janus_with_the_openai_judge_on_a_loopback_server(tiny_janus_dir, coco_file, tmp_path, server):
    judged = {}  # per prompt "1", "0", "1", ...: every group gets pictures judged right and wrong, whatever order
    # the engine's concurrent requests arrive in (non-zero advantages)

    lock = threading.Lock()

    def verdict(body):
        text = next(part["text"] for part in body["messages"][-1]["content"] if part["type"] == "text")
        with lock:
            judged[text] = judged.get(text, -1) + 1
            return "10"[judged[text] % 2]

    server.cfg["content"] = verdict
    flags = ["--judge", "openai", "--", "--umm.judge.url", server.url, "--umm.judge.model", "coco-vlm"]
    _recipe("r3", tiny_janus_dir, coco_file, tmp_path, *flags)
    steps, policy = _r3_steps(tmp_path)
    assert steps[0]["r3_v"] == pytest.approx(0.5) and all(s["actor_grad_norm"] > 0 for s in steps)
    assert len(server.requests) >= 8 and all(r["body"]["model"] == "coco-vlm" for r in server.requests)
    _fully_fine_tuned(tiny_janus_dir, tmp_path, policy)

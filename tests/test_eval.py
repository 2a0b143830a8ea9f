import numpy as np
import pytest
import torch

from umm_plugin.eval import generate_images, shapes_rollout_stats
from umm_plugin.models.generation import SamplingConfig

PROMPTS = ["a photo of a red circle", "a photo of two blue squares"]


def test_min_p_near_one_samples_the_argmax(tiny_umm):
    greedy, _ = generate_images(tiny_umm, PROMPTS, SamplingConfig(temperature=0.0), seed=0)
    sharp, _ = generate_images(tiny_umm, PROMPTS, SamplingConfig(min_p=0.999), seed=1)
    plain, _ = generate_images(tiny_umm, PROMPTS, SamplingConfig(), seed=1)
    assert torch.equal(greedy, sharp) and not torch.equal(greedy, plain)


def test_rollout_stats_are_fractions_and_the_images_follow_the_prompts(tiny_umm):
    stats, images = shapes_rollout_stats(tiny_umm, 12, include_eos=True, sampling=SamplingConfig(min_p=0.03))
    assert set(stats) == {"accuracy", "reward", "auc", "objects_per_image", "extra_object_rate"}
    assert 0 <= stats["accuracy"] <= 1 and 0 < stats["reward"] <= 1 and 0 <= stats["extra_object_rate"] <= 1
    assert images.shape == (12, 32, 32, 3)


GENEVAL = [
    {"tag": "single_object", "include": [{"class": "stop sign", "count": 1}], "prompt": "a photo of a stop sign"},
    {
        "tag": "position",
        "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}],
        "prompt": "a photo of a dog left of a cat",
        "yn_question_list": ["Is there a dog?", "Is there a cat?", "Is the dog left of the cat?"],
    },
    {"tag": "single_object", "include": [{"class": "bear", "count": 1}], "prompt": "a photo of a bear"},
]


def test_geneval_report_is_the_models_own_reward_and_checks_per_tag(tiny_janus_dir):
    from umm_plugin.eval import evaluate_geneval
    from umm_plugin.models.janus import JanusUMM

    model = JanusUMM.from_pretrained(tiny_janus_dir)
    report, images = evaluate_geneval(model, GENEVAL, SamplingConfig(), seed=3, chunk=2)
    assert images.shape == (3, model.image_size, model.image_size, 3) and images.dtype == np.uint8
    assert [(t, r["n"]) for t, r in report["by_tag"].items()] == [
        ("single_object", 2),
        ("position", 1),
        ("overall", 3),
    ]
    rows = report["per_prompt"]
    assert report["by_tag"]["single_object"]["gvu_reward"] == pytest.approx(
        (rows[0]["gvu_reward"] + rows[2]["gvu_reward"]) / 2
    )
    # each image's reward is GvU's, exp(mean log p(prompt | image)), whatever else shared its batch
    for row, image in zip(rows, images):
        logp, mask = model.text_logprobs(image[None], model.describe, [row["prompt"]])
        assert row["gvu_reward"] == pytest.approx(float(torch.exp(logp.sum() / mask.sum())), abs=1e-5)
    # the position line is judged by its own three questions, the others by "Is this <prompt>?"
    answers = model.yes_no(np.stack([images[1]] * 3), GENEVAL[1]["yn_question_list"])
    assert rows[1]["yes_no_pass"] == pytest.approx(float((answers > 0).float().mean()))
    assert rows[0]["yes_no_pass"] == float(model.yes_no(images[:1], [f"Is this {GENEVAL[0]['prompt']}?"])[0] > 0)


def test_eval_cli_on_a_janus_directory_writes_the_grid_and_report(tiny_janus_dir, tmp_path):
    import json
    import subprocess
    import sys

    prompts = tmp_path / "geneval.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in GENEVAL))
    cmd = [sys.executable, "-m", "umm_plugin.cli", "eval", "--model", str(tiny_janus_dir), "--prompts", str(prompts)]
    cmd += ["--grid", str(tmp_path / "grid.png"), "--json", str(tmp_path / "report.json")]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "single_object" in run.stdout and "position" in run.stdout and (tmp_path / "grid.png").is_file()
    assert json.loads((tmp_path / "report.json").read_text())["by_tag"]["overall"]["n"] == 3
    run = subprocess.run(cmd[:6], capture_output=True, text=True)  # no --prompts for a real model
    assert run.returncode == 2 and "--prompts FILE (GenEval JSONL) goes with a real model" in run.stderr
    run = subprocess.run(cmd + ["--rounds", "2"], capture_output=True, text=True)  # never silently dropped
    assert run.returncode == 2 and "--rounds (R3 at inference) runs on ShapesWorld models only" in run.stderr

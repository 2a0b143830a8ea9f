"""The plugin's driver-side checks: bad flags, model directories and prompt files fail in one line, before Ray."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # end-to-end recipe runs in a subprocess

FLAGS = ["--plugins", "umm_plugin.openrlhf.plugin:register", "--data.input_key", "prompt"]


def _train_ppo_ray(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "openrlhf.cli.train_ppo_ray", *FLAGS, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            ['{"prompt": "a photo of a circle", "include": [{"class": "circle", "count": 1}]}', ""],
            "bad.jsonl:2: empty line",
        ),
        (['{"prompt": "a photo of a circle"}'], "bad.jsonl:1: include: missing"),
        (
            ['{"prompt": "a photo of a dog", "include": [{"class": "circle", "count": 1}]}'],
            'bad.jsonl:1: prompt: unknown word "dog"',
        ),
    ],
)
def test_bad_prompt_file_fails_before_ray_naming_file_and_line(pretrained_dir, tmp_path, lines, message):
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    run = _train_ppo_ray(
        tmp_path,
        "--actor.model_name_or_path",
        str(pretrained_dir),
        "--data.prompt_dataset",
        str(tmp_path / "bad.jsonl"),
    )
    assert run.returncode == 2
    assert message in run.stderr.splitlines()[-1]
    assert "Traceback" not in run.stderr and "ray" not in run.stdout.lower()  # Ray never started


def test_bad_flags_through_openrlhfs_own_parser_are_one_line_errors(pretrained_dir, tmp_path):
    """OpenRLHF's real parser and exit path (every check's message: test_plugin_config, in-process): an argparse type
    error, a config check, and OpenRLHF's default --vllm.sync_backend nccl refused for the UMM engine."""
    model = ["--actor.model_name_or_path", str(pretrained_dir)]
    run = _train_ppo_ray(tmp_path, *model, "--gvu.include_eos", "maybe")
    assert run.returncode == 2 and "--gvu.include_eos: invalid true_or_false value: 'maybe'" in run.stderr
    run = _train_ppo_ray(tmp_path, *model, "--srum.per", "diagonal")
    assert run.returncode == 2 and "srum per 'diagonal': use one of position, sample" in run.stderr.splitlines()[-1]
    run = _train_ppo_ray(tmp_path, *model, "--rollout.engine", "umm_plugin.openrlhf.engine:create_engines")
    assert run.returncode == 2 and "--vllm.sync_backend nccl: the UMM engine syncs" in run.stderr.splitlines()[-1]
    assert "Traceback" not in run.stderr and "ray" not in run.stdout.lower()

"""The plugin entry in-process (the slow tier runs it through train_ppo_ray): the driver's check turns bad flags,
model directories and prompt files into one parser error and binds the estimators to the parsed config; a Ray
worker's `register(None)` builds the same config from the exported flags."""

import argparse
import json

import pytest
from openrlhf.trainer.ppo_utils.experience_maker import GROUP_ADVANTAGE_ESTIMATORS, TOKEN_ADVANTAGE_ESTIMATORS
from openrlhf.utils.config import hierarchize

from umm_plugin.openrlhf.plugin import gvu_grpo, r3_stage, register

ENGINE = "umm_plugin.openrlhf.engine:create_engines"


def _driver(argv):
    """OpenRLHF's parser, reduced to the flags the check reads, with the plugin registered on it."""
    parser = argparse.ArgumentParser(prog="train_ppo_ray", exit_on_error=False)
    for flag in ("--rollout.engine", "--actor.model_name_or_path", "--data.prompt_dataset", "--eval.dataset"):
        parser.add_argument(flag, default=None)
    parser.add_argument("--ds.lora.rank", type=int, default=0)
    check = register(parser)
    check(hierarchize(parser.parse_args(argv)))


def test_check_binds_the_estimators_to_the_parsed_flags(pretrained_dir):
    _driver(["--actor.model_name_or_path", str(pretrained_dir), "--gvu.eps", "0.5", "--r3.std_norm", "true"])
    assert GROUP_ADVANTAGE_ESTIMATORS["gvu_grpo"].func is gvu_grpo
    assert GROUP_ADVANTAGE_ESTIMATORS["gvu_grpo"].keywords["cfg"].eps == 0.5
    assert TOKEN_ADVANTAGE_ESTIMATORS["r3_stage"].func is r3_stage
    assert TOKEN_ADVANTAGE_ESTIMATORS["r3_stage"].keywords["cfg"].std_norm is True


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--umm.judge.weights", "reference"], "--umm.judge.weights reference without LoRA needs the UMM engine"),
        (["--umm.head.rl", "true"], "--umm.head.rl needs --rollout.engine"),
        (["--umm.sampling.min_p", "2", "--rollout.engine", ENGINE], "min_p 2"),
        (["--r3.judge", "openai", "--rollout.engine", ENGINE], "--r3.judge openai needs --umm.judge.url"),
        (["--srum.extra", "true"], "srum extra needs assign"),
    ],
)
def test_bad_flags_are_one_parser_error(pretrained_dir, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        _driver(["--actor.model_name_or_path", str(pretrained_dir), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1 and message in err  # one line, no usage dump


def test_bad_model_and_prompt_file_are_one_parser_error(pretrained_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _driver(["--actor.model_name_or_path", str(tmp_path / "nowhere")])
    assert "no such model directory" in capsys.readouterr().err
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a photo of a dog", "include": [{"class": "dog", "count": 1}]}\n')
    with pytest.raises(SystemExit):
        _driver(["--actor.model_name_or_path", str(pretrained_dir), "--data.prompt_dataset", str(prompts)])
    assert 'p.jsonl:1: include[0].class: unknown class "dog"' in capsys.readouterr().err


def test_a_worker_builds_its_config_from_the_exported_flags(monkeypatch):
    monkeypatch.setenv("OPENRLHF_PLUGIN_ARGS", json.dumps({"gvu.eps": 0.25, "r3.std_norm": False}))
    register(None)
    assert GROUP_ADVANTAGE_ESTIMATORS["gvu_grpo"].keywords["cfg"].eps == 0.25
    assert TOKEN_ADVANTAGE_ESTIMATORS["r3_stage"].keywords["cfg"].std_norm is False

"""The plugin entry in-process (the slow tier runs it through train_ppo_ray): the driver's check turns bad flags,
model directories and prompt files into one parser error and binds the estimators to the parsed config; a Ray
worker's `register(None)` builds the same config from the exported flags."""

import argparse
import json

import pytest
from openrlhf.trainer.ppo_utils.experience_maker import GROUP_ADVANTAGE_ESTIMATORS, TOKEN_ADVANTAGE_ESTIMATORS
from openrlhf.utils.config import hierarchize
from transformers import AutoModelForImageTextToText

from umm_plugin.openrlhf.plugin import gvu_grpo, r3_stage, register

ENGINE = "umm_plugin.openrlhf.engine:create_engines"


def _driver(argv):
    """OpenRLHF's parser, reduced to the flags the check reads, with the plugin registered on it."""
    parser = argparse.ArgumentParser(prog="train_ppo_ray", exit_on_error=False)
    for flag in ("--rollout.engine", "--actor.model_name_or_path", "--data.prompt_dataset", "--eval.dataset"):
        parser.add_argument(flag, default=None)
    parser.add_argument("--ds.lora.rank", type=int, default=0)
    parser.add_argument("--ds.lora.target_modules", nargs="*", default="all-linear")
    parser.add_argument("--algo.advantage.estimator", default="gvu_grpo")
    parser.add_argument("--vllm.sync_backend", default="gloo")  # OpenRLHF's is nccl; the recipes pass gloo
    parser.add_argument("--vllm.num_engines", type=int, default=None)
    parser.add_argument("--train.colocate_all", action="store_true")
    parser.add_argument("--actor.num_nodes", type=int, default=1)
    parser.add_argument("--actor.num_gpus_per_node", type=int, default=8)
    parser.add_argument("--data.max_len", type=int, default=2048)
    parser.add_argument("--rollout.batch_size", type=int, default=1024)
    check = register(parser)
    args = hierarchize(parser.parse_args(argv))
    check(args)
    return args


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
        (["--srum.missing", "true"], "srum missing needs assign"),
        (["--srum.k", "0"], "srum k 0 must be at least 1"),
        (["--rollout.engine", ENGINE, "--vllm.sync_backend", "nccl"], "--vllm.sync_backend nccl: the UMM engine"),
        (
            [
                "--rollout.engine",
                ENGINE,
                "--train.colocate_all",
                "--vllm.num_engines",
                "2",
                "--actor.num_gpus_per_node",
                "1",
            ],
            "each engine shares one actor rank's GPU; give at most 1 engines",
        ),
        (
            ["--rollout.engine", ENGINE, "--vllm.num_engines", "3", "--rollout.batch_size", "2"],
            "give at most one engine per prompt of a step",
        ),
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


def test_a_janus_rollout_must_fit_data_max_len(tiny_janus_dir, capsys):
    """OpenRLHF would cut a longer rollout (and its actions) to --data.max_len: refused before Ray instead."""
    args = ["--actor.model_name_or_path", str(tiny_janus_dir), "--rollout.engine", ENGINE]
    for estimator, length, images in (("gvu_grpo", 15, 1), ("r3_stage", 31, 2)):
        with pytest.raises(SystemExit):
            _driver([*args, "--algo.advantage.estimator", estimator, "--data.max_len", str(length)])
        assert f"--data.max_len {length}: a rollout on this model holds {images} image(s) of 16 tokens" in (
            capsys.readouterr().err
        )
    _driver([*args, "--algo.advantage.estimator", "r3_stage", "--data.max_len", "32"])


def test_a_worker_builds_its_config_from_the_exported_flags(monkeypatch, tiny_janus_dir):
    monkeypatch.setenv("OPENRLHF_PLUGIN_ARGS", json.dumps({"gvu.eps": 0.25, "r3.std_norm": False}))
    mapping = AutoModelForImageTextToText._model_mapping
    monkeypatch.setattr(mapping, "_extra_content", dict(mapping._extra_content))  # undone after the test
    register(None)
    assert GROUP_ADVANTAGE_ESTIMATORS["gvu_grpo"].keywords["cfg"].eps == 0.25
    assert TOKEN_ADVANTAGE_ESTIMATORS["r3_stage"].keywords["cfg"].std_norm is False
    # what OpenRLHF's actor loads for a Janus directory: the RL view over text and image token ids
    assert type(AutoModelForImageTextToText.from_pretrained(tiny_janus_dir)).__name__ == "JanusForRL"


def test_janus_check_expands_lora_to_the_language_model_and_reads_real_prompt_files(tiny_janus_dir, coco_file):
    janus = ["--actor.model_name_or_path", str(tiny_janus_dir), "--rollout.engine", ENGINE]
    args = _driver([*janus, "--data.prompt_dataset", str(coco_file), "--ds.lora.rank", "8"])
    layers = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # OpenRLHF's all-linear
    assert sorted(args.ds.lora.target_modules) == sorted(
        f"model.language_model.layers.{i}.{'mlp' if m in layers[4:] else 'self_attn'}.{m}"
        for i in range(2)
        for m in layers
    )
    args = _driver([*janus, "--ds.lora.rank", "8", "--ds.lora.target_modules", "q_proj", "down_proj"])
    assert args.ds.lora.target_modules == [
        f"model.language_model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "mlp.down_proj")
    ]  # not the SigLIP encoder's q_proj


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "is a Janus model: vLLM does not serve its image generation"),
        (["--rollout.engine", ENGINE, "--umm.head.rl", "true"], "Janus decodes with its VQ decoder"),
        (["--rollout.engine", ENGINE, "--algo.advantage.estimator", "ppo"], "GvU (gvu_grpo), SRUM online"),
        (
            ["--rollout.engine", ENGINE, "--algo.advantage.estimator", "r3_stage", "--r3.judge", "evaluator"],
            "ShapesWorld's exact checker; on a Janus model use self or openai",
        ),
        (
            ["--rollout.engine", ENGINE, "--algo.advantage.estimator", "srum_dense", "--srum.scorer", "caption"],
            "asks yes/no questions; use prob",
        ),
        (["--rollout.engine", ENGINE, "--ds.lora.rank", "8", "--ds.lora.target_modules", "fc1"], "no such linear"),
    ],
)
def test_janus_check_refuses_what_does_not_run_on_janus(tiny_janus_dir, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        _driver(["--actor.model_name_or_path", str(tiny_janus_dir), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1 and message in err


def test_janus_check_names_the_bad_line_of_a_real_prompt_file(tiny_janus_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"tag": "single_object", "include": [{"class": "stop sign", "count": 1}], "prompt": "a stop sign"}\n7\n'
    )
    with pytest.raises(SystemExit):
        _driver(
            [
                "--actor.model_name_or_path",
                str(tiny_janus_dir),
                "--rollout.engine",
                ENGINE,
                "--data.prompt_dataset",
                str(prompts),
            ]
        )
    assert f"{prompts}:2:" in capsys.readouterr().err

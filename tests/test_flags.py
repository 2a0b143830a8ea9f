"""The flag reference and the config dataclasses: docs/flags.md is what `umm-plugin flags` writes today, each
setting has one default, and bad values fail in `__post_init__`."""

import argparse
import dataclasses
from pathlib import Path

import pytest

from umm_plugin.flags import reference
from umm_plugin.models.generation import SamplingConfig
from umm_plugin.openrlhf.config import (
    EvalConfig,
    GvUConfig,
    HeadConfig,
    JudgeConfig,
    PluginConfig,
    R3Config,
    UMMConfig,
    add_flags,
    flag_fields,
)
from umm_plugin.openrlhf.srum import SRUMOfflineConfig

DOCS = Path(__file__).parents[1] / "docs" / "flags.md"


def test_flag_reference_is_current():
    assert DOCS.read_text() == reference(), "run `umm-plugin flags --out docs/flags.md`"


def test_every_plugin_flag_is_in_the_reference_with_its_default():
    text = reference()
    names = [name for name, _ in flag_fields()]
    assert len(names) == len(set(names)) > 30
    for name, f in flag_fields():
        assert f"| `--{name}` |" in text and f.metadata["help"]


def test_parsed_flags_build_the_config_tree():
    parser = argparse.ArgumentParser()
    add_flags(parser)
    from openrlhf.utils.config import hierarchize

    args = hierarchize(
        parser.parse_args(
            ["--umm.sampling.min_p", "0.03", "--umm.judge.weights", "reference", "--gvu.include_eos", "0"]
        )
    )
    cfg = PluginConfig.from_namespace(args)
    assert cfg.umm.sampling == SamplingConfig(min_p=0.03)
    assert cfg.umm.judge.weights == "reference" and cfg.gvu.include_eos is False
    assert cfg.umm.eval == EvalConfig() and cfg.r3 == R3Config()  # the rest keeps its defaults
    assert PluginConfig.from_namespace(None) == PluginConfig()


def test_one_min_p_default():
    # The sampler's own defaults are SamplingConfig's; the CLI, the SRUM offline trainer and the RL flags read it.
    assert SamplingConfig().min_p == 0.0 and UMMConfig().sampling.min_p == 0.0
    assert "min_p" not in {f.name for f in dataclasses.fields(SRUMOfflineConfig)}
    from umm_plugin.cli import build_parser

    parser = build_parser()
    for cmd in (["eval", "--model", "x"], ["generate", "--model", "x", "--prompt", "p"], ["srum", "--model", "x"]):
        assert parser.parse_args(cmd).min_p == SamplingConfig().min_p


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SamplingConfig(min_p=2), "min_p 2"),
        (lambda: SamplingConfig(top_k=-1), "top_k -1"),
        (lambda: SamplingConfig(temperature=-1), "temperature -1"),
        (lambda: JudgeConfig(weights="mine"), "--umm.judge.weights 'mine'"),
        (lambda: JudgeConfig(url="ftp://x"), "--umm.judge.url 'ftp://x'"),
        (lambda: JudgeConfig(timeout=-1), "--umm.judge.timeout -1"),
        (lambda: EvalConfig(n=-1), "--umm.eval.n -1"),
        (lambda: HeadConfig(steps=1), "--umm.head.steps 1"),
        (lambda: HeadConfig(kl=-1), "--umm.head.kl -1"),
        (lambda: UMMConfig(threads=-2), "--umm.threads -2"),
        (lambda: GvUConfig(eps=0), "--gvu.eps 0"),
        (lambda: PluginConfig(r3=R3Config(judge="openai")), "--r3.judge openai needs --umm.judge.url"),
    ],
)
def test_bad_values_name_their_flag(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.").replace("+", r"\+")):
        make()

"""`recipes/srum.sh --smoke` in both modes through the real code paths: online through `train_ppo_ray` (the SRUM
executor's per-token rewards carried by patch 0006 to the `srum_dense` estimator), offline through `umm-plugin srum`
on OpenRLHF's DeepSpeed strategy. Both complete, log, write curves and maps, and save a model `umm-plugin eval`
loads."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from umm_plugin.models.umm import UMM

REPO = Path(__file__).resolve().parents[2]


def _run(args, **env):
    return subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, env={**os.environ, "UMM_PYTHON": sys.executable, **env}
    )


def _eval_loads(model_dir):
    run = _run([sys.executable, "-m", "umm_plugin.cli", "eval", "--model", str(model_dir), "--n", "10"])
    assert run.returncode == 0, run.stderr[-2000:]
    assert "generation" in run.stdout and "understanding" in run.stdout


@pytest.fixture(scope="module")
def online_run(pretrained_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("srum_online")
    run = _run(["bash", "recipes/srum.sh", "--smoke"], UMM_BASE=str(pretrained_dir), UMM_OUT=str(out))
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return out


@pytest.mark.slow  # train_ppo_ray end to end
def test_online_smoke_trains_on_per_token_rewards(online_run):
    tmp_path = online_run
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [s["global_step"] for s in steps] == [1, 2]
    for s in steps:
        assert 0 <= s["srum_map_mean"] <= 1 and s["reward"] == pytest.approx(s["srum_map_mean"])
        assert -1 <= s["srum_global"] <= 1 and s["srum_regions"] >= 0
        assert 0 <= s["zero_advantage_tokens"] <= 1 and 0 <= s["shapes_accuracy"] <= 1
    assert any(s["actor_grad_norm"] > 0 for s in steps)  # the dense advantages reached the policy loss
    rows = list(csv.DictReader((tmp_path / "curve.csv").open()))
    assert [r["step"] for r in rows] == ["0", "2"] and "train_srum_map_mean" in rows[1]
    _eval_loads(tmp_path / "policy")


@pytest.fixture(scope="module")
def offline_run(pretrained_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("srum_offline")
    run = _run(["bash", "recipes/srum.sh", "--offline", "--smoke"], UMM_BASE=str(pretrained_dir), UMM_OUT=str(out))
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return out, run


def test_offline_smoke_fine_tunes_and_saves(pretrained_dir, offline_run):
    tmp_path, run = offline_run
    assert "self-judged samples" in run.stdout and "epoch 1:" in run.stdout
    rows = list(csv.DictReader((tmp_path / "curve.csv").open()))
    assert [r["step"] for r in rows] == ["0", "1"] and float(rows[1]["loss_backbone"]) > 0
    assert (tmp_path / "maps.png").is_file() and (tmp_path / "grid_00001.png").is_file()
    _eval_loads(tmp_path / "model")
    before, after = UMM.from_pretrained(pretrained_dir), UMM.from_pretrained(tmp_path / "model")
    moved = max((a - b).abs().max() for a, b in zip(after.backbone.parameters(), before.backbone.parameters()))
    assert moved > 0  # the backbone trained on the map-weighted token loss
    assert torch.equal(after.head.codebook, before.head.codebook)


def test_offline_rejects_bad_flags(pretrained_dir, tmp_path):
    run = _run([sys.executable, "-m", "umm_plugin.cli", "srum", "--model", str(pretrained_dir), "--out", str(tmp_path),
                "--scorer", "vibes"])  # fmt: skip
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0
    assert "scorer 'vibes'" in run.stderr


def test_offline_run_resumed_for_a_second_epoch_equals_one_run_of_two(pretrained_dir, offline_run, tmp_path):
    """The one-epoch smoke run, resumed with --epochs 2 (its judged samples, generator and DeepSpeed checkpoint
    loaded), ends where one two-epoch run does, bit for bit: curve and model (the lr is constant, so epoch 1 is the
    same in both). A rerun without --resume or --overwrite is refused in one line."""
    one, _ = offline_run
    resumed = tmp_path / "resumed"
    shutil.copytree(one, resumed)
    env = {"UMM_BASE": str(pretrained_dir)}
    refused = _run(["bash", "recipes/srum.sh", "--offline", "--smoke"], UMM_OUT=str(resumed), **env)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "holds an earlier run: --resume true continues it" in refused.stderr
    logs = {}
    for out, flags in ((resumed, ["--resume"]), (tmp_path / "whole", [])):
        cmd = ["bash", "recipes/srum.sh", "--offline", "--smoke", *flags, "--", "--epochs", "2"]
        run = _run(cmd, UMM_OUT=str(out), **env)
        assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
        logs[out.name] = run.stdout
    assert "resumed after epoch 1 with 8 self-judged samples" in logs["resumed"]  # loaded, not judged again

    def curve(out):  # timings aside
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader((out / "curve.csv").open())]

    assert curve(resumed) == curve(tmp_path / "whole") and len(curve(resumed)) == 3
    for f in ("model/model.safetensors", "model/diffusion_head/diffusion_pytorch_model.safetensors"):
        assert (resumed / f).read_bytes() == (tmp_path / "whole" / f).read_bytes(), f


@pytest.mark.slow  # train_ppo_ray end to end
def test_online_two_actor_ranks_and_two_engines_train_as_one_of_each(
    pretrained_dir, online_run, tmp_path, same_training
):
    """`--actors 2 --engines 2`: the same self-judged samples and reward maps (per-token rewards reach the right
    samples after OpenRLHF splits the batch over ranks) and the same weights after step 1 as 1 x 1."""
    run = _run(
        ["bash", "recipes/srum.sh", "--smoke", "--actors", "2", "--engines", "2"],
        UMM_BASE=str(pretrained_dir),
        UMM_OUT=str(tmp_path),
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    same_training(
        online_run, tmp_path, ["reward", "srum_map_mean", "srum_global", "zero_advantage_tokens", "actor_grad_norm"]
    )

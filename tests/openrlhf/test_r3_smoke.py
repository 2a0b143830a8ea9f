"""`recipes/r3.sh --smoke` through the real `python -m openrlhf.cli.train_ppo_ray` with the self and evaluator judges
(openai end to end: test_janus_smoke.py): step 0 is stage 1 (plan + image), step 1 stage 2 (reflect + refine from
the buffer); the host's `r3_stage` estimator trains on it, the engine's evaluation writes R3's round-wise columns,
and the checkpoint loads in `umm-plugin eval`. The recipe trains the diffusion head beside the backbone
(patches/0007): its PPO ratio starts at exactly 1 (the engine's head is the actor's after each sync, and the
rollout's SDE log-prob is scored again on the same step), it moves, and the engine's final head equals the head the
actor saved."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from umm_plugin.openrlhf.head_policy import NAME

pytestmark = pytest.mark.slow  # end-to-end recipe runs in a subprocess

REPO = Path(__file__).resolve().parents[2]


def _run(args, **env):
    return subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, env={**os.environ, "UMM_PYTHON": sys.executable, **env}
    )


def _smoke(base, out, judge, *extra):
    run = _run(
        ["bash", "recipes/r3.sh", "--smoke", "--judge", judge, "--", *extra], UMM_BASE=str(base), UMM_OUT=str(out)
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["r3_stage"] for s in steps] == [1.0, 2.0]  # stage 1, then stage 2 from the buffer
    for s in steps:
        assert 0 <= s["r3_v"] <= 1 and s["reward"] == pytest.approx(s["r3_v"]) and 0 <= s["r3_format"] <= 1
        assert s["kl"] >= 0 and "policy_loss" in s
        assert abs(s["umm_head_ratio"] - 1) < 1e-5 and s["umm_head_kl"] >= 0  # one update: ratio 1 iff exact
    head = "diffusion_head/diffusion_pytorch_model.safetensors"
    base_w, actor_w, engine_w = (load_file(d / head) for d in (base, out / "actor", out / "policy"))
    assert actor_w.keys() == engine_w.keys() == base_w.keys()
    assert all(torch.equal(actor_w[k], engine_w[k]) for k in actor_w)  # the sync is exact
    moved = max(float((actor_w[k] - base_w[k]).abs().max()) for k in actor_w)
    assert 0 <= steps[1]["r3_stop"] <= 1 and -1 <= steps[1]["r3_correction"] <= 1
    rows = list(csv.DictReader((out / "curve.csv").open()))
    assert [r["step"] for r in rows] == ["0", "2"]
    for r in rows:
        assert 0 <= float(r["r3_accuracy_round0"]) <= 1 and 0 <= float(r["r3_accuracy_round1"]) <= 1
    assert (out / "rounds_00002.png").is_file() and (out / "curve.png").is_file()
    run = _run([sys.executable, "-m", "umm_plugin.cli", "eval", "--model", str(out / "policy"), "--n", "10"])
    assert run.returncode == 0, run.stderr[-2000:]
    return steps, moved


def test_smoke_self_judge(pretrained_dir, tmp_path):
    _smoke(pretrained_dir, tmp_path, "self")


EVALUATOR = ["evaluator", "--r3.score", "checklist"]


@pytest.fixture(scope="module")
def evaluator_run(pretrained_dir, tmp_path_factory):
    """One evaluator-judge smoke run (a checkpoint at each step), shared by the head test and the resume test."""
    out = tmp_path_factory.mktemp("r3_evaluator")
    _, moved = _smoke(pretrained_dir, out, *EVALUATOR)
    return out, moved


def test_smoke_evaluator_judge_trains_the_head(evaluator_run):
    # The checklist's share gives V spread inside groups even for a tiny model, so image advantages are not all 0.
    assert evaluator_run[1] > 0


def test_run_killed_in_stage_2_resumes_to_the_uninterrupted_result(
    pretrained_dir, evaluator_run, tmp_path, kill_and_resume, same_run
):
    """SIGKILL once step 1 (stage 1) is checkpointed, mid-way through stage 2, then --resume: the engine restores
    the stage-1 groups that stage 2 draws its roots from, the generators and the step count, and the actor its head
    (an actor extension, patches/0007): the same metrics, curve and weights, bit for bit, as the uninterrupted run."""
    env = {**os.environ, "UMM_PYTHON": sys.executable, "UMM_BASE": str(pretrained_dir), "UMM_OUT": str(tmp_path)}
    cmd = ["bash", "recipes/r3.sh", "--smoke", "--judge", EVALUATOR[0], "--", *EVALUATOR[1:]]
    resumed = kill_and_resume(cmd, env, tmp_path, 1)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert "Loading the checkpoint" in resumed.stdout + resumed.stderr
    head = "diffusion_head/diffusion_pytorch_model.safetensors"
    files = ["actor/model.safetensors", f"actor/{head}", "policy/model.safetensors", f"policy/{head}"]
    same_run(evaluator_run[0], tmp_path, files)


def test_two_actor_ranks_and_two_engines_train_stage_1_as_one_of_each(
    pretrained_dir, evaluator_run, tmp_path, same_training
):
    """`--actors 2 --engines 2`: stage 1 (plans, images, verdicts, text rewards) draws the same samples and trains
    the backbone and the diffusion head (an actor extension: its gradients averaged over ranks) to the weights of
    1 x 1; stage 2 draws the same roots (both engines fill their buffers with every engine's stage-1 groups, in
    prompt order) and so the same reflections, edits and rewards."""
    env = {"UMM_BASE": str(pretrained_dir), "UMM_OUT": str(tmp_path)}
    cmd = ["bash", "recipes/r3.sh", "--smoke", "--judge", EVALUATOR[0], "--actors", "2", "--engines", "2"]
    run = _run([*cmd, "--", *EVALUATOR[1:]], **env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    same_training(evaluator_run[0], tmp_path, ["reward", "r3_v", "r3_format", "r3_text_reward", "r3_plan_tokens"])
    path = "ckpt/_actor/global_step1/mp_rank_00_model_states.pt"
    heads = [torch.load(d / path, weights_only=False)["actor_extensions"][NAME] for d in (evaluator_run[0], tmp_path)]
    flat = [torch.cat([t.flatten().float() for t in h["head"].values()]) for h in heads]
    assert (flat[0] - flat[1]).abs().max() < 1e-6
    second = [json.loads((d / "metrics.jsonl").read_text().splitlines()[1]) for d in (evaluator_run[0], tmp_path)]
    for key in ("r3_v", "r3_v_prev", "r3_stop", "r3_correction", "r3_text_reward", "r3_format", "total_length"):
        assert second[1][key] == pytest.approx(second[0][key], rel=1e-5, abs=1e-7), key

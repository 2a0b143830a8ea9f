"""The recipes refuse bad input in one line before any work: --smoke with --steps, a run directory that holds
files the plugin did not write (left byte for byte as they were), and a used run directory without --resume or
--overwrite, or --resume with nothing to resume."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _recipe(name, *args, **env):
    env = {**os.environ, "UMM_PYTHON": sys.executable, **env}
    return subprocess.run(["bash", f"recipes/{name}.sh", *args], cwd=REPO, capture_output=True, text=True, env=env)


@pytest.mark.parametrize("name", ["gvu", "srum", "r3"])
def test_smoke_and_steps_together_are_refused(name):
    r = _recipe(name, "--smoke", "--steps", "5")
    assert (
        r.returncode == 2
        and r.stderr.strip() == f"{name}.sh: --smoke runs 2 steps; give --smoke or --steps N, not both"
    )


@pytest.mark.parametrize("name", ["gvu", "r3"])
def test_a_run_directory_of_someone_elses_files_is_refused_and_left_alone(name, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    r = _recipe(name, "--smoke", UMM_OUT=str(out), UMM_BASE=str(tmp_path / "no-base"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "holds files umm-plugin did not write" in lines[0], r.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    assert not (tmp_path / "no-base").exists()  # refused before pretraining a base


def _used_run(tmp_path, checkpoint: bool):
    """A run directory the plugin wrote (its marker), killed before or after its first checkpoint."""
    out = tmp_path / "run"
    (out / "ckpt" / "_actor").mkdir(parents=True)
    (out / ".umm-plugin").touch()
    (out / "curve.csv").write_text("step,reward\n0,0.5\n")
    if checkpoint:
        (out / "ckpt" / "_actor" / "latest").write_text("global_step1")
    return out


@pytest.mark.parametrize(
    "flags, checkpoint, error",
    [
        ((), True, "holds an earlier run: --resume continues it from its last checkpoint, --overwrite deletes it"),
        (("--resume",), False, "nothing to resume in {out}: it holds no checkpoint yet; start again with --overwrite"),
        (("--resume", "--overwrite"), True, "give --resume (continue the run in {out}) or --overwrite"),
    ],
)
@pytest.mark.parametrize("name", ["gvu", "srum", "r3"])
def test_a_used_run_directory_needs_resume_or_overwrite(name, flags, checkpoint, error, tmp_path):
    out = _used_run(tmp_path, checkpoint)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = _recipe(name, "--smoke", *flags, UMM_OUT=str(out), UMM_BASE=str(tmp_path / "no-base"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and error.format(out=out) in lines[0], r.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "no-base").exists()


def test_resume_of_a_directory_that_holds_no_run_is_refused(tmp_path):
    r = _recipe("gvu", "--smoke", "--resume", UMM_OUT=str(tmp_path / "new"), UMM_BASE=str(tmp_path / "no-base"))
    assert (
        r.returncode == 2
        and r.stderr.strip() == f"nothing to resume in {tmp_path / 'new'}: it holds no run; leave out --resume"
    )


def test_overwrite_deletes_the_earlier_run_first(tmp_path):
    out = _used_run(tmp_path, True)
    # A Python that fails at once stops the recipe right after it cleared the directory.
    r = _recipe("gvu", "--smoke", "--overwrite", UMM_OUT=str(out), UMM_PYTHON="false")
    assert r.returncode != 0 and not (out / "curve.csv").exists() and not (out / "ckpt").exists()


@pytest.mark.parametrize("name", ["gvu", "srum", "r3"])
def test_no_colocate_without_gpu_is_refused(name, tmp_path):
    r = _recipe(name, "--smoke", "--no-colocate", UMM_OUT=str(tmp_path / "run"))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "--no-colocate places ranks on GPUs of their own: it goes with --gpu"
    )
    assert not (tmp_path / "run").exists()  # refused before anything was written

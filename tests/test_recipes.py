"""The recipes refuse bad input in one line before any work: --smoke with --steps, and a run directory that holds
files the plugin did not write (left byte for byte as they were)."""

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

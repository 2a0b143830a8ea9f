"""`umm-plugin patch-openrlhf`: the installed OpenRLHF is patched, patches revert to the wheel's exact bytes, apply is
idempotent and all-or-nothing, other versions are refused, and OpenRLHF's own test suite still passes."""

import base64
import csv
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from umm_plugin.openrlhf import patching


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "openrlhf").rglob("*.py"))}


@pytest.fixture
def scratch(tmp_path):
    """A copy of the installed (patched) OpenRLHF package to patch and revert freely."""
    shutil.copytree(
        patching.site_root() / "openrlhf", tmp_path / "openrlhf", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def test_installed_openrlhf_has_every_patch():
    files = patching.patch_files()
    assert [p.name[:4] for p in files] == ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008"]
    assert patching.applied_count(patching.site_root(), files) == len(files)
    for p in files:  # every patch says why before its diff
        assert p.read_text().splitlines()[2].startswith("Why: ")


def test_revert_restores_the_wheel_bytes_and_apply_is_idempotent(scratch):
    files, patched = patching.patch_files(), _tree(scratch)
    assert patching.revert(scratch, files) == [p.name for p in reversed(files)]
    record = next(patching.site_root().glob("openrlhf-0.11.2.dist-info")) / "RECORD"
    wheel = {row[0]: row[1] for row in csv.reader(record.open()) if row[0].startswith("openrlhf/") and row[1]}
    now = _tree(scratch)
    assert set(now) == {f for f in wheel if f.endswith(".py")}  # the files patches added are gone
    for name, data in now.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert wheel[name] == f"sha256={digest}", name
    assert patching.applied_count(scratch, files) == 0
    assert patching.apply(scratch, files) == [p.name for p in files]
    assert _tree(scratch) == patched
    assert patching.apply(scratch, files) == []


def test_a_modified_openrlhf_is_refused_and_left_untouched(scratch):
    files = patching.patch_files()
    patching.revert(scratch, files)
    target = scratch / "openrlhf" / "cli" / "train_ppo_ray.py"
    target.write_text(target.read_text().replace('parser.add_argument("--use_ms"', 'parser.add_argument("--use_ms2"'))
    before = _tree(scratch)
    with pytest.raises(patching.PatchError, match="neither OpenRLHF 0.11.2"):
        patching.apply(scratch, files)
    assert _tree(scratch) == before


def test_another_openrlhf_version_is_refused(tmp_path, monkeypatch):
    (tmp_path / "openrlhf").mkdir()
    (tmp_path / "openrlhf" / "__init__.py").write_text("")
    dist = tmp_path / "openrlhf-0.9.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: openrlhf\nVersion: 0.9.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(patching.PatchError, match="installed OpenRLHF is 0.9.0; patches/ is written for 0.11.2"):
        patching.site_root()


def test_openrlhf_own_test_suite_passes_patched(tmp_path):
    suite = patching.site_root() / "tests"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert " passed" in out.stdout.splitlines()[-1] and "failed" not in out.stdout.splitlines()[-1]

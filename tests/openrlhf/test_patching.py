"""`umm-plugin patch-openrlhf`: the installed OpenRLHF is patched, patches revert to the wheel's exact bytes, apply is
idempotent and all-or-nothing, other versions are refused, and OpenRLHF's own test suite still passes. Each patch is
the upstream pull request it should become: its description, then a `git diff` (exact index lines) that `git apply`
takes as well as GNU patch."""

import base64
import csv
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from umm_plugin.openrlhf import patching

SERIES = [
    "0001-plugins.patch",
    "0002-cpu-device.patch",
    "0003-rollout-engine.patch",
    "0004-advantage-estimators.patch",
    "0005-fp32.patch",
    "0006-token-rewards.patch",
    "0007-actor-extensions.patch",
    "0008-jsonl-logger.patch",
    "0009-exact-resume.patch",
    "0010-zero3-gloo.patch",
]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "openrlhf").rglob("*.py"))}


@pytest.fixture
def scratch(tmp_path):
    """A copy of the installed (patched) OpenRLHF package to patch and revert freely."""
    shutil.copytree(
        patching.site_root() / "openrlhf", tmp_path / "openrlhf", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def _blob(data: bytes) -> str:
    """Git's id of a file's bytes, as an `index` line names it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sections(patch: Path) -> tuple[list[str], list[list[str]]]:
    """A patch's prose header (its pull-request description) and its file sections, each from its `diff --git`."""
    lines = patch.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("diff --git ")]
    assert starts, f"{patch.name} has no `diff --git` line"
    return lines[: starts[0]], [lines[a:b] for a, b in zip(starts, starts[1:] + [len(lines)])]


def test_installed_openrlhf_has_every_patch():
    files = patching.patch_files()
    assert [p.name for p in files] == SERIES
    assert patching.applied_count(patching.site_root(), files) == len(files)
    for p in files:  # every patch says what and why before its diff; "(after 0001-N)" names the patch before it
        prose, _ = _sections(p)
        title = re.fullmatch(r"OpenRLHF 0\.11\.2(?: \(after 0001-(\d{4})\))?: .+", prose[0])
        assert title and title[1] in (None, f"{int(p.name[:4]) - 1:04d}"), prose[0]
        assert prose[1] == "" and prose[2].startswith("Why: ")
        assert not any(line.startswith(("--- ", "+++ ", "@@ ")) for line in prose), p.name


def test_every_file_section_is_a_git_diff_whose_index_line_names_the_blobs(scratch):
    """Each section is headed as `git diff` writes it, and its index line holds the file's git ids before and after
    the patch in the series (what `git apply --3way` falls back on)."""
    files = patching.patch_files()
    patching.revert(scratch, files)
    for p in files:
        blobs = {}
        for section in _sections(p)[1]:
            path = re.fullmatch(r"diff --git a/(\S+) b/\1", section[0])[1]
            if section[1] == "new file mode 100644":
                index = re.fullmatch(r"index 0{7}\.\.([0-9a-f]{7,})", section[2])
                assert section[3:5] == ["--- /dev/null", f"+++ b/{path}"] and not (scratch / path).exists(), p.name
                hunk = section[5]
            else:
                index = re.fullmatch(r"index ([0-9a-f]{7,})\.\.([0-9a-f]{7,}) 100644", section[1])
                assert section[2:4] == [f"--- a/{path}", f"+++ b/{path}"], p.name
                assert _blob((scratch / path).read_bytes()).startswith(index[1]), (p.name, path)
                hunk = section[4]
            assert hunk.startswith("@@ "), (p.name, path)
            blobs[path] = index[index.lastindex]
        assert patching.apply(scratch, files[: files.index(p) + 1]) == [p.name]
        for path, blob in blobs.items():
            assert _blob((scratch / path).read_bytes()).startswith(blob), (p.name, path)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_apply_takes_the_series_and_gives_the_same_files(scratch):
    files, patched = patching.patch_files(), _tree(scratch)
    patching.revert(scratch, files)
    subprocess.run(["git", "init", "-q", str(scratch)], check=True)  # so git applies paths relative to scratch
    for p in files:
        check = subprocess.run(["git", "apply", "--check", str(p)], cwd=scratch, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        subprocess.run(["git", "apply", str(p)], cwd=scratch, check=True)
    assert _tree(scratch) == patched
    assert patching.applied_count(scratch, files) == len(files)


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


@pytest.mark.slow
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

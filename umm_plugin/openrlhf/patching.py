"""`umm-plugin patch-openrlhf`: apply the diffs in `patches/` to the installed OpenRLHF, idempotently.

Each patch adds one extension point OpenRLHF 0.11.2 lacks and reads as the upstream pull request it should become:
its description (what, then "Why: ..."), then a `git diff` against the series before it (so `git apply` takes it
as well). They are applied with GNU `patch` in name order; one already applied is skipped, a run that fails half-way
reverts what it applied, and a version of OpenRLHF the patches were not written for is refused before anything is
touched.
"""

import importlib.metadata
import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path

OPENRLHF_VERSION = "0.11.2"
PATCH_DIR = Path(__file__).resolve().parents[2] / "patches"


class PatchError(RuntimeError):
    pass


def site_root() -> Path:
    """The directory holding the installed `openrlhf/` package (patches use paths a/openrlhf/...)."""
    spec = importlib.util.find_spec("openrlhf")
    if spec is None or not spec.submodule_search_locations:
        raise PatchError("OpenRLHF is not installed: pip install openrlhf==0.11.2")
    version = importlib.metadata.version("openrlhf")
    if version != OPENRLHF_VERSION:
        raise PatchError(f"installed OpenRLHF is {version}; patches/ is written for {OPENRLHF_VERSION} only")
    return Path(list(spec.submodule_search_locations)[0]).parent


def patch_files(patch_dir: Path = PATCH_DIR) -> list[Path]:
    files = sorted(patch_dir.glob("*.patch"))
    if not files:
        raise PatchError(f"no *.patch files in {patch_dir}: run from a checkout of umm-plugin (pip install -e .)")
    return files


def _patch(root: Path, patch: Path, *flags: str) -> bool:
    cmd = ["patch", "-p1", "-d", str(root), "-f", "-s", "--no-backup-if-mismatch", "-r", "-", "-i", str(patch)]
    return subprocess.run(cmd + list(flags), capture_output=True, text=True).returncode == 0


def applied_count(root: Path, files: list[Path]) -> int:
    """How many patches the installed OpenRLHF has. They are applied in order and later ones may edit lines next to
    (or added by) earlier ones, so the state is a prefix k, found on a scratch copy of the package: reverting the
    first k must give a tree that every patch then applies to, in order."""
    for k in range(len(files), -1, -1):
        with tempfile.TemporaryDirectory() as tmp:
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(root / "openrlhf", Path(tmp) / "openrlhf", ignore=ignore)
            if all(_patch(Path(tmp), p, "-R") for p in reversed(files[:k])) and all(
                _patch(Path(tmp), p) for p in files
            ):
                return k
    raise PatchError(
        f"{root / 'openrlhf'} is neither OpenRLHF {OPENRLHF_VERSION} nor it with some of patches/ applied: reinstall "
        f"it (pip install --force-reinstall --no-deps openrlhf=={OPENRLHF_VERSION}) and run again"
    )


def apply(root: Path, files: list[Path]) -> list[str]:
    """Apply the patches not yet applied, all or nothing. Returns the names applied now."""
    todo, done = files[applied_count(root, files) :], []
    for p in todo:
        if not _patch(root, p):
            for q in reversed(done):
                _patch(root, q, "-R")
            raise PatchError(f"{p.name} does not apply to {root / 'openrlhf'}")
        done.append(p)
    return [p.name for p in done]


def revert(root: Path, files: list[Path]) -> list[str]:
    """Revert the applied patches, last first. Returns the names reverted."""
    undone = []
    for p in reversed(files[: applied_count(root, files)]):
        if not _patch(root, p, "-R"):
            raise PatchError(f"could not revert {p.name} in {root / 'openrlhf'}")
        undone.append(p.name)
    return undone

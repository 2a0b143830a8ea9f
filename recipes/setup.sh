#!/usr/bin/env bash
# Install umm-plugin with OpenRLHF 0.11.2 into a venv (default .venv; UMM_VENV overrides) on a CPU machine.
# torch is pinned to the CPU wheel on disk (an unpinned torch pulls a multi-GB CUDA build); flash-attn is installed
# as its pure-Python part (no CUDA build) because OpenRLHF requires it; vLLM is not installed (no CPU wheel).
# Then applies patches/ to the installed OpenRLHF. Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${UMM_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# (a pip config may list local wheel folders that may not exist; drop only those warnings, keep pip's status)
pip_install() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2); }
pip_install torch==2.13.0
if ! "$VENV/bin/python" -c "import flash_attn" 2>/dev/null; then
  FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE FLASH_ATTENTION_FORCE_BUILD=TRUE pip_install --no-build-isolation --no-deps flash-attn==2.8.3
fi
# flash-attn's CUDA extension does not exist on CPU; an empty stand-in lets `import flash_attn` (OpenRLHF) succeed.
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
[ -f "$site/flash_attn_2_cuda.py" ] || echo "# CPU stand-in: flash-attn's CUDA kernels are not built here." > "$site/flash_attn_2_cuda.py"
pip_install -e ".[test]"
"$VENV/bin/python" -c "import torch, openrlhf, umm_plugin; assert torch.__version__.startswith('2.13.0'), torch.__version__"
# OpenRLHF's missing extension points (plugins, CPU device, rollout-engine factory, estimators, fp32): patches/
"$VENV/bin/umm-plugin" patch-openrlhf
echo "umm-plugin installed in $VENV"

# Sourced by the other scripts: creates (once) and activates .venv with torch
# and real_ext installed in editable mode, compiled for this machine.
#
# TORCH_SPEC picks the torch to install when .venv has none. The default is
# the CPU wheel this project's machines carry; never leave it unpinned, or pip
# downloads a multi-GB CUDA build. On a GPU machine with torch already in the
# system Python, build in place instead: see bench/gpu/check.sh.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if [ ! -x "$REPO_ROOT/.venv/bin/python" ]; then
  python3 -m venv "$REPO_ROOT/.venv"
fi
# shellcheck disable=SC1091
source "$REPO_ROOT/.venv/bin/activate"
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "$TORCH_SPEC" ninja
fi
python -m pip install -q ninja
# --no-build-isolation: build against the torch installed above, not a fresh one.
MAX_JOBS="${MAX_JOBS:-$(nproc)}" python -m pip install -q --no-build-isolation -e "$REPO_ROOT[test]"

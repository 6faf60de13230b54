#!/usr/bin/env bash
# The main job (README, first command): set up .venv and run the packed
# attention benchmark on this machine. (It becomes the end-to-end RLHF
# quickstart once the runtime lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python bench/bench_attention.py "$@"

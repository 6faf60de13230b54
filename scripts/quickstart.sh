#!/usr/bin/env bash
# The main job (README, first command): set up .venv and run PPO end to end on
# the built-in sort task with 4 local workers and a ReaL allocation
# (examples/ppo_sort.py; about 3 minutes on 2 cores). Output in runs/ppo_sort.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python examples/ppo_sort.py --out runs/ppo_sort "$@"

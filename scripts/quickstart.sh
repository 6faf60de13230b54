#!/usr/bin/env bash
# The main job (README, first command): set up .venv, then `real-ext quickstart`:
# SFT -> reward model -> PPO on the built-in sort task with 4 local workers and
# a ReaL allocation (real_ext/experiments/configs/quickstart.yaml; about 4
# minutes on 2 cores). Output in runs/quickstart/{sft,rw,ppo}. Extra arguments
# go to the command (e.g. --out DIR, --resume, stages.ppo.steps=200).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
real-ext quickstart "$@"

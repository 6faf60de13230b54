#!/usr/bin/env bash
# The test command (README, second command; .ci/run calls it): set up .venv,
# compile-check every CUDA source with nvcc, build and run the C++ tests
# (CMake + ctest against libtorch), then the Python tests (CPU; GPU tests are
# marked `cuda` and run by bench/gpu/check.sh on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
bash scripts/check_cuda_compile.sh
cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$(python -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" >/dev/null
cmake --build build/cmake -j "$(nproc)" --target real_ext_tests >/dev/null  # the tests and the sources they exercise
ctest --test-dir build/cmake --output-on-failure
python -m pytest python_tests -q "$@"

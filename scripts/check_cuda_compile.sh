#!/usr/bin/env bash
# Compile-only check of every CUDA source for sm_80 and sm_90a with a bare nvcc
# (no torch CUDA headers needed: kernels take raw pointers and a stream).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null; then
  echo "check_cuda_compile: nvcc not found; CUDA sources NOT compile-checked" >&2
  exit 0
fi
mkdir -p build/nvcc
# The same half/bf16 macros torch's build passes, so the kernels see what they will see there.
FLAGS=(-c -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -Icsrc
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
       -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a)
export FLAGS_STR="${FLAGS[*]}"
find csrc -name '*.cu' | sort | xargs -P "$(nproc)" -I{} sh -c \
  'nvcc $FLAGS_STR "{}" -o "build/nvcc/$(basename "{}" .cu).o" && echo "nvcc ok: {}"'

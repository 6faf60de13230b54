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

# The torch glue (*_cuda.cpp) needs torch's CUDA headers, which the CPU wheel
# ships, and the CUDA math libraries' headers, which a bare nvcc lacks: a
# syntax-only g++ pass with stand-ins for the few handle and status types
# those headers declare catches glue that would not compile on the GPU machine.
CUDA_INC="$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/.*INCLUDES="-I\([^"]*\)".*/\1/p' | head -1)"
if [ ! -f "$CUDA_INC/cuda_runtime_api.h" ]; then
  echo "check_cuda_compile: no CUDA runtime headers at $CUDA_INC; torch glue NOT syntax-checked" >&2
  exit 0
fi
TORCH_INC="$(python -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))')"
PY_INC="$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
STUBS=build/cuda_glue_stubs
mkdir -p "$STUBS/c10/cuda/impl"
: > "$STUBS/c10/cuda/impl/cuda_cmake_macros.h"
echo 'typedef struct cusparseContext* cusparseHandle_t;' > "$STUBS/cusparse.h"
printf 'typedef struct cublasContext* cublasHandle_t;\ntypedef int cublasStatus_t;\n' > "$STUBS/cublas_v2.h"
echo 'typedef struct cublasLtContext* cublasLtHandle_t;' > "$STUBS/cublasLt.h"
echo 'typedef int cusolverStatus_t;' > "$STUBS/cusolver_common.h"
printf '#include "cusolver_common.h"\ntypedef struct cusolverDnContext* cusolverDnHandle_t;\n' > "$STUBS/cusolverDn.h"
GLUE_FLAGS="-fsyntax-only -std=c++17 -w -DREAL_EXT_HAS_CUDA=1 -Icsrc -I$CUDA_INC -I$STUBS -I$PY_INC"
for inc in $TORCH_INC; do GLUE_FLAGS="$GLUE_FLAGS -I$inc"; done
export GLUE_FLAGS
find csrc -name '*_cuda.cpp' | sort | xargs -P "$(nproc)" -I{} sh -c 'g++ $GLUE_FLAGS "{}" && echo "g++ glue ok: {}"'

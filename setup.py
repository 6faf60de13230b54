"""Builds real_ext._C: the CPU sources always, the CUDA sources too when the
installed torch has CUDA and nvcc is found. Nothing is downloaded here.

Environment: MAX_JOBS (ninja parallelism), TORCH_CUDA_ARCH_LIST (CUDA targets,
default "8.0;9.0a"), REAL_EXT_FORCE_CPU=1 (skip CUDA even when available),
REAL_EXT_DEBUG=1 (-O0 -g).
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import (
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "**", pattern), recursive=True)
                  if f"{os.sep}tests{os.sep}" not in p)


def _want_cuda() -> bool:
    if os.environ.get("REAL_EXT_FORCE_CPU") == "1":
        return False
    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.join(CUDA_HOME, "bin", "nvcc"))
    return torch.version.cuda is not None and bool(nvcc) and os.path.exists(nvcc)


def _extension():
    debug = os.environ.get("REAL_EXT_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # -fno-trapping-math: without it GCC keeps the selects of fast_expf (and
    # the loops around it: SwiGLU, every softmax) scalar for AVX2; AVX-512
    # vectorizes them with masks either way. Nothing here reads FP exception flags.
    cxx = opt + ["-std=c++17", "-fopenmp", "-fno-trapping-math", "-DREAL_EXT_HAS_CPU=1"]
    cpu_sources = _sources("*.cpp")
    include = [os.path.join(ROOT, "csrc")]
    if not _want_cuda():
        # *_cuda.cpp is torch glue around CUDA kernels: only built with CUDA.
        cpu_sources = [s for s in cpu_sources if not s.endswith("_cuda.cpp")]
        return CppExtension("real_ext._C", cpu_sources, include_dirs=include, extra_compile_args={"cxx": cxx},
                            extra_link_args=["-fopenmp"], py_limited_api=True)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    nvcc = opt + ["-std=c++17", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr",
                  "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
    return CUDAExtension("real_ext._C", cpu_sources + _sources("*.cu"), include_dirs=include,
                         extra_compile_args={"cxx": cxx + ["-DREAL_EXT_HAS_CUDA=1"], "nvcc": nvcc},
                         extra_link_args=["-fopenmp"], py_limited_api=True)


setup(
    packages=find_packages(include=["real_ext", "real_ext.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)

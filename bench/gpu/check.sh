#!/usr/bin/env bash
# One prepared run on the GPU machine (H100/H200, torch 2.11+cu130, no internet):
# build the CUDA extension in place against the torch already installed there,
# run the CUDA tests, then the GPU benchmarks; logs and tables go to $1.
# Budget: about 8 minutes, so that a rerun fits in the 15-minute device lease.
#
#   bash bench/gpu/check.sh "$OUT"            (through the device tool)
set -uo pipefail
OUT_DIR="${1:?usage: check.sh OUT_DIR}"
cd "$(dirname "$0")/../.."
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
SUMMARY="$OUT_DIR/summary.md"
step() {  # step NAME TIMEOUT_S CMD...: run, log to $OUT_DIR/NAME.log, record the status
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  echo "- $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$SUMMARY"
  return $rc
}
{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
  nvcc --version | tail -1
} >"$SUMMARY" 2>&1
cat "$SUMMARY"

# Build in place (no pip: no dependency resolution, no build isolation).
step build 300 python3 setup.py build_ext --inplace || { tail -50 "$OUT_DIR/build.log"; exit 1; }
{ echo "- compiler: $(grep -o '^[^ ]*g++' "$OUT_DIR/build.log" | sort -u | tr '\n' ' ')";
  echo "- libstdc++ of _C: $(ldd real_ext/_C*.so | grep -o 'libstdc++[^ ]* => [^ ]*' || echo 'none (static)')"; } >>"$SUMMARY"
# Worker processes (pytest-xdist): a crashing test is reported as such, the rest still run.
step tests_cuda 180 python3 -m pytest python_tests -m cuda -q -n 4 --no-header -p no:cacheprovider
tail -15 "$OUT_DIR/tests_cuda.log"
step bench_attention 180 python3 bench/bench_attention.py --device cuda --no-flex --out "$OUT_DIR/attention.md"
step bench_attention_long 120 python3 bench/bench_attention.py --device cuda --no-flex --head-dims 128 \
  --batch 32 --min-len 512 --max-len 4096 --out "$OUT_DIR/attention_long.md"
step bench_model 120 python3 bench/bench_model.py --device cuda --dtype bfloat16 --out "$OUT_DIR/model.md"
step bench_pack 60 python3 bench/bench_pack.py --device cuda --out "$OUT_DIR/pack.md"
step bench_generate 150 python3 bench/bench_generate.py --device cuda --dtype bfloat16 --out "$OUT_DIR/generate.md"
step bench_gae 60 python3 bench/bench_gae.py --device cuda --out "$OUT_DIR/gae.md"
for f in attention attention_long model pack generate gae; do [ -f "$OUT_DIR/$f.md" ] && { echo; cat "$OUT_DIR/$f.md"; } >>"$SUMMARY"; done
echo; cat "$SUMMARY"

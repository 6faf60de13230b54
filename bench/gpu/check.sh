#!/usr/bin/env bash
# One prepared run on the GPU machine (H100/H200, torch 2.11+cu130, no internet):
# build the CUDA extension in place against the torch already installed there,
# run the CUDA tests, then the GPU benchmarks; a summary, the tables, the PPO
# timeline and a tarball of every log come back in $1 (the device tool returns
# at most 8 files).
# Budget: DEADLINE_S (default 480 s) for the whole script, so that a rerun fits
# in the 15-minute device lease; a step that would start with under 20 s left
# is skipped, and each step's limit is cut to the time left.
#
#   bash bench/gpu/check.sh "$OUT"                      (through the device tool)
#   bash bench/gpu/check.sh "$OUT" generate ppo         (only these steps, after the build)
set -uo pipefail
OUT_DIR="${1:?usage: check.sh OUT_DIR [STEP...]}"
shift
ONLY=" $* "
cd "$(dirname "$0")/../.."
mkdir -p "$OUT_DIR"
LOGS="$(mktemp -d)/logs"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
DEADLINE_S="${DEADLINE_S:-480}"
SUMMARY="$OUT_DIR/summary.md"
finish() {  # the logs and tables travel as one tarball
  tar czf "$OUT_DIR/logs.tgz" -C "$(dirname "$LOGS")" logs
  echo; cat "$SUMMARY"
}
trap finish EXIT
step() {  # step NAME LIMIT_S CMD...: run (if asked for and time is left), log to $LOGS/NAME.log
  local name=$1 limit=$2; shift 2
  if [ "$ONLY" != "  " ] && [ "$name" != build ] && [[ "$ONLY" != *" $name "* ]]; then return 0; fi
  local left=$((DEADLINE_S - SECONDS))
  if [ "$left" -lt 20 ]; then echo "- $name: skipped, ${left} s left" | tee -a "$SUMMARY"; return 1; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  echo "- $name: rc=$rc in $((SECONDS - t0)) s (limit $limit s)" | tee -a "$SUMMARY"
  return $rc
}
{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "CUDA", torch.version.cuda, "transformers", transformers.__version__)'
  nvcc --version | tail -1
  echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
} >"$SUMMARY" 2>&1
cat "$SUMMARY"

# Build in place (no pip: no dependency resolution, no build isolation).
step build 300 python3 setup.py build_ext --inplace || { tail -50 "$LOGS/build.log"; exit 1; }
{ echo "- compiler: $(grep -o '^[^ ]*g++' "$LOGS/build.log" | sort -u | tr '\n' ' ')";
  echo "- libstdc++ of _C: $(ldd real_ext/_C*.so | grep -o 'libstdc++[^ ]* => [^ ]*' || echo 'none (static)')"; } >>"$SUMMARY"
# Worker processes (pytest-xdist): a crashing test is reported as such, the rest still run.
# The Ray tests are left out: the GPU machine has no Ray (and no internet to get it); they have no CUDA case.
step tests_cuda 200 python3 -m pytest python_tests -m cuda -q -n 4 --no-header -p no:cacheprovider \
  --ignore=python_tests/runtime/test_ray_launcher.py
if [ -f "$LOGS/tests_cuda.log" ]; then
  grep -E "passed|failed|error" "$LOGS/tests_cuda.log" | tail -3 | tee -a "$SUMMARY"
  grep -E "^(FAILED|ERROR)" "$LOGS/tests_cuda.log" | head -20 | tee -a "$SUMMARY"
fi
step generate 150 python3 bench/bench_generate.py --device cuda --dtype bfloat16 --model 0.5b --batches 16,64 --repeats 1 --profile \
  --out "$LOGS/generate.md"
step ppo 150 python3 bench/bench_ppo_gpu.py --out-dir "$LOGS"
[ -f "$LOGS/ppo_timeline.png" ] && cp "$LOGS/ppo_timeline.png" "$OUT_DIR/"
step pack 60 python3 bench/bench_pack.py --device cuda --out "$LOGS/pack.md"
step decode 60 python3 bench/bench_decode_attention.py --device cuda --dtype bfloat16 --out "$LOGS/decode.md"
step gae 60 python3 bench/bench_gae.py --device cuda --out "$LOGS/gae.md"
step layers 60 python3 bench/bench_layers.py --device cuda --dtypes bfloat16 --tokens 8192,64 --out "$LOGS/layers.md"
step model 90 python3 bench/bench_model.py --device cuda --dtype bfloat16 --out "$LOGS/model.md"
step attention 150 python3 bench/bench_attention.py --device cuda --no-flex --out "$LOGS/attention.md"
step attention_long 120 python3 bench/bench_attention.py --device cuda --no-flex --head-dims 128 \
  --batch 32 --min-len 512 --max-len 4096 --out "$LOGS/attention_long.md"
# The same machine's CPU cores, no GPU: the reallocation executor over gloo with one core per
# worker (the development machines run 4-8 workers on 2 cores), and CPU generation on 2 of its
# cores (another CPU class than the development machines').
step realloc 240 python3 bench/bench_realloc.py --repeats 5 --out "$LOGS/realloc.md"
# What a gloo message costs with a core per worker (on 2 cores, 150-220 us per message at 8 workers).
step messages 60 python3 bench/bench_messages.py --workers 8 --mib-per-pair 12 --out "$LOGS/messages.md"
step generate_cpu 150 env OMP_NUM_THREADS=2 taskset -c 0,1 python3 bench/bench_generate.py --batches 64 --repeats 1 \
  --out "$LOGS/generate_cpu.md"
step decode_cpu 60 env OMP_NUM_THREADS=2 taskset -c 0,1 python3 bench/bench_decode_attention.py \
  --out "$LOGS/decode_cpu.md"
for f in generate ppo pack decode gae model attention attention_long realloc messages generate_cpu decode_cpu; do
  [ -f "$LOGS/$f.md" ] && { echo; echo "## $f"; cat "$LOGS/$f.md"; } >>"$SUMMARY"
done
for f in "$LOGS"/*.log; do  # the end of every failed or empty table's log
  name=$(basename "$f" .log)
  [ -f "$LOGS/$name.md" ] || [ "$name" = build ] || [ "$name" = tests_cuda ] || { echo; echo "## $name log (tail)"; tail -25 "$f"; } >>"$SUMMARY"
done

#!/usr/bin/env bash
# GPU check of the performance core: one run on one Hopper card (H100/H200), at most ~9 minutes.
#   bash bench/gpu_wheels.sh              # here, once: the wheels the GPU machine lacks, into .whl/ (carry it)
#   bash bench/gpu_check.sh               # repository root, on the GPU machine (wheels in .whl/ if carried)
#   bash bench/gpu_check.sh --cpu-smoke   # here, on the CPU: every step's command line on toy sizes
#                                         # (Triton interpreter), so the one GPU run does not die of a typo
# Steps, in order, each under its own time limit (seconds; environment overrides), all inside TOTAL_S:
#   tests   TESTS_S=130  the kernel/engine test files in full, then the GPU-marked tests of the rest
#                        (-x off, per-test timeout where pytest-timeout is installed)
#   host    HOST_S=40    host cost per call of dinov3_deploy::rope_attention (torch.profiler)
#   kernels KERNEL_S=100 attention (incl. B=1), fused, stitch, msda (deformable attention), configs
#   model   MODEL_S=170  whole backbone 512x512 bf16: compile vs compile+Triton, default and
#                        reduce-overhead, vitl16/vitb16, B=1/8
#   m2f     M2F_S=90     whole M2F segmentor (vitl16, hidden 2048) 896x896 bf16: the deformable-attention
#                        kernel vs torch.compile of the plain core (goal 1.3x), peak memory; then the M2F
#                        stitch's peak memory, chunked vs the graph's scores (bench/m2f_stitch_memory.py)
#   e2e     E2E_S=90     infer's path vs torch.compile + device stitch (and the others) on 2048x1024
# One failing step does not stop the others. Reports (JSON + Markdown + logs) go to
# bench/results/gpu_<stamp>/ and, packed into one archive, to $OUT/gpu_results.tgz (a call returns at
# most 8 files); the summary and the tables are printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-590}
TESTS_S=${TESTS_S:-130}
HOST_S=${HOST_S:-40}
KERNEL_S=${KERNEL_S:-100}
MODEL_S=${MODEL_S:-170}
E2E_S=${E2E_S:-90}
M2F_S=${M2F_S:-90}
START=$(date +%s)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RES=bench/results/gpu_$STAMP
[ "$SMOKE" = 1 ] && RES=${TMPDIR:-/tmp}/gpu_check_smoke_$STAMP
mkdir -p "$RES"
LOG=$RES/gpu_check.log
SMOKEARG=()
if [ "$SMOKE" = 1 ]; then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
  SMOKEARG=(--smoke)
fi
export PYTHONUNBUFFERED=1

{
  echo "== $(date -u) $(hostname) mode=$([ "$SMOKE" = 1 ] && echo cpu-smoke || echo gpu)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
} 2>&1 | tee "$LOG"

# Carried wheels (pure Python: what the machine lacks, e.g. polygraphy): installed beside, not over, its packages.
if [ "$SMOKE" = 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  echo "wheels: $(ls .whl | tr '\n' ' ')" | tee -a "$LOG"
fi
# The project without its dependencies (the machine's torch stays); fall back to a PYTHONPATH shim.
if [ "$SMOKE" = 0 ] && ! $PY -m pip install --no-deps --no-build-isolation -q -e . >>"$LOG" 2>&1; then
  echo "pip install -e . failed; using a PYTHONPATH shim" | tee -a "$LOG"
  SHIM=$(mktemp -d); mkdir -p "$SHIM/dinov3_deploy"
  for f in dinov3_deploy/*; do ln -s "$PWD/$f" "$SHIM/dinov3_deploy/"; done
  for d in reference kernels engines bench; do ln -s "$PWD/$d" "$SHIM/dinov3_deploy/$d"; done
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY - <<'PYEOF' 2>&1 | tee -a "$LOG"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for m in ("triton", "onnx", "onnxscript", "onnxruntime", "polygraphy", "click", "rich", "safetensors", "PIL", "ml_dtypes", "jsonschema", "pytest_timeout", "xdist", "dinov3_deploy"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '')}")
    except Exception as exc:
        print(f"  {m} MISSING ({type(exc).__name__}: {exc})")
PYEOF

declare -A RC
# step NAME LIMIT CMD...: CMD under min(LIMIT, what is left of TOTAL_S); output to $RES/NAME.log
step() {
  local name=$1 limit=$2; shift 2
  local left=$((TOTAL_S - ($(date +%s) - START)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "== $name SKIPPED: ${left}s left of ${TOTAL_S}s" | tee -a "$LOG"; RC[$name]=skipped; return
  fi
  echo "== $name (limit ${limit}s, $(( $(date +%s) - START ))s in)" | tee -a "$LOG"
  timeout -k 5 "$limit" "$@" >"$RES/$name.log" 2>&1
  RC[$name]=$?
  echo "   $name rc=${RC[$name]} after $(( $(date +%s) - START ))s" | tee -a "$LOG"
  tail -6 "$RES/$name.log" | sed 's/^/   | /'
}

PYTEST=($PY -m pytest -q -p no:cacheprovider -o addopts="" -rfEs)
$PY -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout 90)
KERNEL_TESTS=(tests/test_kernel_attention.py tests/test_kernel_qkv_rope.py tests/test_kernel_fused_attention.py
              tests/test_kernel_stitch.py tests/test_kernel_ms_deform_attn.py tests/test_engine_runtime.py)
GPU_TESTS=(tests/test_predictor.py tests/test_device_window.py tests/test_image_stream.py)
if [ "$SMOKE" = 1 ]; then
  step tests "$TESTS_S" "${PYTEST[@]}" --collect-only "${KERNEL_TESTS[@]}" "${GPU_TESTS[@]}"
else
  XDIST=()
  $PY -c "import xdist" 2>/dev/null && XDIST=(-n 4)  # Triton compiles the kernels' variants in parallel
  step tests-kernels $((TESTS_S / 2)) "${PYTEST[@]}" "${XDIST[@]}" "${KERNEL_TESTS[@]}"
  step tests-gpu $((TESTS_S / 2)) "${PYTEST[@]}" -m gpu "${GPU_TESTS[@]}"
fi

KB=($PY -m dinov3_deploy.bench.kernels_bench "${SMOKEARG[@]}")
step host "$HOST_S" "${KB[@]}" --sections host --out "$RES/host.json" --budget-s $((HOST_S - 10))
step kernels "$KERNEL_S" "${KB[@]}" --sections attention,fused,stitch,msda,configs --out "$RES/kernels.json" \
  --budget-s $((KERNEL_S - 25))
step model "$MODEL_S" "${KB[@]}" --sections e2e --out "$RES/model.json" --budget-s $((MODEL_S - 45))
step m2f $((M2F_S - 20)) "${KB[@]}" --sections m2f --out "$RES/m2f.json" --budget-s $((M2F_S - 45))
STITCH_MEM=(--device cuda)
[ "$SMOKE" = 1 ] && STITCH_MEM=(--device cpu --window 64 --image 70 100 --classes 20 --queries 10)
step m2f-stitch 20 $PY -m dinov3_deploy.bench.m2f_stitch_memory "${STITCH_MEM[@]}" --out "$RES/m2f_stitch_memory.json"
E2E_ARGS=()
[ "$SMOKE" = 1 ] && E2E_ARGS=(--smoke --iters 1 --combos compile-stitch,reference)
step e2e "$E2E_S" $PY -m dinov3_deploy.bench.e2e_gpu "${E2E_ARGS[@]}" --out "$RES/e2e.json"

# The archive first (what comes back), then the tables: a print that fails cannot lose the files.
SUMMARY=$RES/summary.md
$PY -m dinov3_deploy.bench.kernels_bench --summarize "$RES" >"$SUMMARY" 2>&1
for k in "${!RC[@]}"; do echo "step $k rc=${RC[$k]}"; done | sort >>"$SUMMARY"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  tar czf "$OUT/gpu_results.tgz" -C "$(dirname "$RES")" "$(basename "$RES")" && cp "$SUMMARY" "$OUT/summary.md"
fi
for json in "$RES"/host.json "$RES"/kernels.json "$RES"/model.json "$RES"/m2f.json "$RES"/e2e.json; do
  [ -f "$json" ] && $PY -m dinov3_deploy.bench.report "$json" 2>&1 | tail -60
done
echo "== summary ($(( $(date +%s) - START ))s)"
cat "$SUMMARY"
echo "reports: $RES${OUT:+ (archive: \$OUT/gpu_results.tgz)}"

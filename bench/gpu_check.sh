#!/usr/bin/env bash
# GPU check of the performance core, one run on one card (Hopper: H100/H200).
#   bash bench/gpu_check.sh            # from the repository root, on the GPU machine
# Uses the machine's own Python + torch + triton (installs nothing but this project, without
# dependencies), runs the GPU tests, then both benchmarks through the one harness (same timing,
# environment capture and report schema): the kernel bench (kernels_bench.py) and the model
# bench (`dinov3-deploy bench`, which also needs click/rich/onnx from the machine). Reports go to
# bench/results/ and $OUT (when set); each table is printed from its JSON at the end, also when a
# step was cut short by its timeout (the JSON is rewritten after every case).
# Time limits (seconds, override by environment): TESTS_S=300 (about 30 cold Triton compiles),
# KERNEL_S=210, MODEL_S=90, E2E_S=150 (a vitb16 export, then two timed paths): about 12 minutes at most.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TESTS_S=${TESTS_S:-300}
KERNEL_S=${KERNEL_S:-210}
MODEL_S=${MODEL_S:-90}
E2E_S=${E2E_S:-150}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RES=bench/results
mkdir -p "$RES"
[ -n "${OUT:-}" ] && mkdir -p "$OUT"
LOG=${OUT:-$RES}/gpu_check_$STAMP.log

{
  echo "== $(date -u) $(hostname)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'device', torch.cuda.get_device_name(0))"
} 2>&1 | tee "$LOG"

# The project without its dependencies (the machine's torch stays); fall back to PYTHONPATH.
if ! $PY -m pip install --no-deps --no-build-isolation -q -e . >>"$LOG" 2>&1; then
  echo "pip install -e . failed; using a PYTHONPATH shim" | tee -a "$LOG"
  SHIM=$(mktemp -d); mkdir -p "$SHIM/dinov3_deploy"
  for f in dinov3_deploy/*; do ln -s "$PWD/$f" "$SHIM/dinov3_deploy/"; done
  for d in reference kernels engines bench; do ln -s "$PWD/$d" "$SHIM/dinov3_deploy/$d"; done
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
fi

echo "== GPU tests (limit ${TESTS_S}s)" | tee -a "$LOG"
if $PY -c "import pytest" 2>/dev/null; then
  timeout "$TESTS_S" $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_kernel_attention.py \
    tests/test_kernel_qkv_rope.py tests/test_kernel_fused_attention.py tests/test_kernel_stitch.py \
    tests/test_predictor.py tests/test_device_window.py tests/test_image_stream.py 2>&1 \
    | tail -25 | tee -a "$LOG"
  TESTS_RC=${PIPESTATUS[0]}
else
  echo "pytest is not installed in $PY (and this machine has no network): GPU tests NOT run" | tee -a "$LOG"
  TESTS_RC=missing-pytest
fi

# step NAME LIMIT_S JSON CMD...: runs CMD under the limit, keeps its output in the log and copies
# the report (JSON + Markdown) to $OUT.
step() {
  local name=$1 limit=$2 json=$3; shift 3
  echo "== $name (limit ${limit}s)" | tee -a "$LOG"
  timeout "$limit" "$@" >"$LOG.$name" 2>&1
  local rc=$?
  cat "$LOG.$name" >>"$LOG"
  [ "$rc" -ne 0 ] && tail -15 "$LOG.$name"
  if [ -n "${OUT:-}" ]; then cp "$json" "${json%.json}.md" "$OUT/" 2>/dev/null; fi
  return "$rc"
}

KJSON=$RES/kernels_bench_$STAMP.json
step kernel-bench "$KERNEL_S" "$KJSON" \
  $PY -m dinov3_deploy.bench.kernels_bench --out "$KJSON" --budget-s $((KERNEL_S - 45))
KERNEL_RC=$?

MJSON=$RES/model_bench_$STAMP.json
step model-bench "$MODEL_S" "$MJSON" \
  $PY -c "from dinov3_deploy.cli import main; main()" bench --model vitb16 --task seg --batch 1,8 --size 512 \
  --precision bf16 --attn sdpa,triton --out "$RES" --name "model_bench_$STAMP" --no-plot
MODEL_RC=$?

# End to end: infer's path (Triton attention + CUDA graph + stitch kernel) vs the reference path
# (eager SDPA + the reference stitch on the host) on one 2048x1024 image: images/s, stitch share.
EJSON=$RES/e2e_gpu_$STAMP.json
step e2e "$E2E_S" "$EJSON" $PY -m dinov3_deploy.bench.e2e_gpu --out "$EJSON"
E2E_RC=$?

# The tables, read back from the reports (whatever each step finished before any timeout).
for json in "$KJSON" "$MJSON" "$EJSON"; do
  if [ -f "$json" ]; then
    $PY -m dinov3_deploy.bench.report "$json" 2>&1 | tail -80
  else
    echo "no report at $json"
  fi
done
echo "== tests rc=$TESTS_RC kernel bench rc=$KERNEL_RC model bench rc=$MODEL_RC e2e rc=$E2E_RC" \
  "reports: $KJSON $MJSON $EJSON"

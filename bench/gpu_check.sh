#!/usr/bin/env bash
# GPU check for the performance core (issue 5), one run on one card (Hopper: H100/H200).
#   bash bench/gpu_check.sh            # from the repository root, on the GPU machine
# Uses the machine's own Python + torch + triton (installs nothing but this project, without
# dependencies), runs the GPU tests, runs the benchmark, writes JSON under $OUT (when set) and
# bench/results/, and prints a short table last. Sized for ~8 minutes on an H100.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
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

echo "== GPU tests" | tee -a "$LOG"
if $PY -c "import pytest" 2>/dev/null; then
  timeout 120 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_kernel_attention.py tests/test_kernel_qkv_rope.py \
    tests/test_kernel_fused_attention.py tests/test_kernel_stitch.py 2>&1 | tail -25 | tee -a "$LOG"
  TESTS_RC=${PIPESTATUS[0]}
else
  echo "pytest is not installed in $PY (and this machine has no network): GPU tests NOT run" | tee -a "$LOG"
  TESTS_RC=missing-pytest
fi

echo "== benchmark" | tee -a "$LOG"
JSON=$RES/kernels_bench_$STAMP.json
timeout 360 $PY bench/kernels_bench.py --out "$JSON" --budget-s 270 >"$LOG.bench" 2>&1
BENCH_RC=$?
cat "$LOG.bench" >>"$LOG"
[ -n "${OUT:-}" ] && cp "$JSON" "$OUT/" 2>/dev/null
echo "== tests rc=$TESTS_RC bench rc=$BENCH_RC json=$JSON"
if [ "$BENCH_RC" -eq 0 ]; then
  tail -40 "$LOG.bench"
else  # cut short (timeout or crash): the JSON holds every finished section; print its table
  tail -15 "$LOG.bench"
  $PY -c "import json, runpy, sys; m = runpy.run_path('bench/kernels_bench.py'); print(m['summary'](json.load(open(sys.argv[1]))))" "$JSON" 2>&1 | tail -40
fi

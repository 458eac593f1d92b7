#!/usr/bin/env bash
# Second, shorter GPU call of a session (after gpu_check.sh): the GPU-marked tests with the carried
# wheels and the B=8 model rows that the first call's time budget skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site
python3 -m pip install --no-deps --no-build-isolation -q -e . >/dev/null 2>&1
RES=bench/results/gpu_rerun_$(date -u +%Y%m%dT%H%M%SZ); mkdir -p "$RES"
timeout -k 5 80 python3 -m pytest -q -p no:cacheprovider -o addopts="" -rfEs -m gpu tests/test_predictor.py \
  tests/test_device_window.py tests/test_image_stream.py tests/test_cli_infer.py tests/test_cli_bench.py >"$RES/tests-gpu.log" 2>&1
echo "tests-gpu rc=$?"; tail -12 "$RES/tests-gpu.log"; mkdir -p "$OUT"; cp "$RES/tests-gpu.log" "$OUT/"
timeout -k 5 165 python3 -m dinov3_deploy.bench.kernels_bench --sections e2e --batches 8 --out "$RES/model_b8.json" \
  --budget-s 150 >"$RES/model_b8.log" 2>&1
echo "model rc=$?"; python3 -m dinov3_deploy.bench.report "$RES/model_b8.json" 2>&1 | tail -14
mkdir -p "$OUT" && tar czf "$OUT/gpu_rerun.tgz" -C bench/results "$(basename "$RES")"

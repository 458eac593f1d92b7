#!/usr/bin/env bash
# The pure-Python wheels (and rpds-py, jsonschema's one compiled need) that the GPU machine lacks and
# gpu_check.sh installs from .whl/: polygraphy (the ONNX Runtime runners) and jsonschema (the tests'
# manifest-schema check: without it every export fixture failed there, 2026-12-04). Python 3.12, x86-64.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  polygraphy==0.49.26 jsonschema jsonschema-specifications referencing rpds-py
ls .whl

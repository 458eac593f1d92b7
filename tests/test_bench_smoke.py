"""bench/kernels_bench.py --smoke: every section's code path runs (CPU, Triton interpreter) and
writes the JSON the GPU script commits, with the fields the README's tables are built from."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

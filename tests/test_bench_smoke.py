"""bench/kernels_bench.py --smoke: every section's code path runs (CPU, Triton interpreter) and
writes the JSON the GPU script commits, with the fields the README's tables are built from."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (ROOT / "bench" / "kernels_bench.py").exists(), reason="no benchmark script")
def test_kernels_bench_smoke(tmp_path):
    out = tmp_path / "smoke.json"
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "kernels_bench.py"), "--smoke", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["smoke"] is True and {"torch", "triton", "device", "date"} <= set(res["env"])
    att = res["attention"][0]
    for key in ("triton", "triton_tma", "sdpa_math"):
        assert att[key]["ms"] > 0 and att[key]["tflops"] > 0, key
    fused = res["fused"][0]
    assert all(fused[k]["ms"] > 0 for k in ("triton_fused", "eager_rope_sdpa", "eager_rope_only"))
    e2e = res["e2e"][0]
    assert e2e["model"] == "vit_tiny_test" and e2e["eager"]["ms"] > 0 and e2e["triton"]["ms"] > 0
    cfg = {r["kernel"]: r for r in res["configs"]}
    assert cfg["attention"]["m16_n16_w4_s1"]["ms"] > 0 and cfg["stitch"]["p32_c4_w4"]["ms"] > 0
    st = res["stitch"][0]
    assert st["labels_agree_with_naive"] == 1.0  # the kernel and the naive canvas path agree
    assert all(st[k]["ms"] > 0 for k in ("triton_labels", "triton_labels_probs", "naive_pad_add"))
    assert r.stdout.strip().splitlines()[-1].startswith("stitch")  # the short table comes last

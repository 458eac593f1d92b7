"""One benchmark stack: the kernel bench and the model bench write the same report envelope and
rows (bench/report.py), time through the one timing module, and the report reads back as written.
Nothing here asserts a speed: timings on a shared 2-core machine are not a contract."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from dinov3_deploy.bench import report as rep
from dinov3_deploy.bench import timing
from dinov3_deploy.bench.harness import timed_row
from dinov3_deploy.bench.kernels_bench import dot_precision
from dinov3_deploy.cli import cli
from dinov3_deploy.reference.protocol.sliding_window import window_grid
from dinov3_deploy.verification.parity import OutputParity

ROW_KEYS = {"target", "shape", "status", "median_ms", "p10_ms", "p90_ms", "min_ms", "iters", "clock",
            "first_call_s", "peak_mem_mb", "parity"}


@pytest.fixture(scope="module")
def kernel_report(tmp_path_factory):
    """`python -m dinov3_deploy.bench.kernels_bench --smoke` (the entry gpu_check.sh runs), on the
    CPU through the Triton interpreter: every section's code path at toy sizes."""
    out = tmp_path_factory.mktemp("kbench") / "kernels.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-m", "dinov3_deploy.bench.kernels_bench", "--smoke", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=300, cwd=out.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    return rep.read_report(out), r.stdout, out


@pytest.fixture(scope="module")
def model_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("mbench")
    res = CliRunner().invoke(cli, ["bench", "--model", "vit_tiny_test", "--task", "seg", "--size", "32x32",
                                   "--attn", "sdpa", "--warmup", "0", "--iters", "2", "--no-plot",
                                   "--out", str(out), "--name", "m"])
    assert res.exit_code == 0, res.output
    return rep.read_report(out / "m.json")


def test_kernel_and_model_bench_write_the_same_envelope(kernel_report, model_report):
    kernel, _, _ = kernel_report
    assert kernel["schema"] == model_report["schema"] == rep.SCHEMA
    assert (kernel["kind"], model_report["kind"]) == ("kernel", "model")
    assert set(kernel["machine"]) == set(model_report["machine"])  # one environment capture
    assert kernel["machine"]["triton_interpret"] is True and kernel["machine"]["versions"]["triton"]
    for r in kernel["rows"] + model_report["rows"]:
        assert ROW_KEYS <= set(r), (r["target"], ROW_KEYS - set(r))
        assert r["status"] == "ok" and r["clock"] == timing.CLOCK_CPU and r["median_ms"] > 0
    sections = {r["section"] for r in kernel["rows"]}
    assert sections == {"attention", "fused", "stitch", "configs", "msda", "e2e"}


def test_kernel_rows_say_how_they_computed(kernel_report):
    kernel, stdout, _ = kernel_report
    rows = {(r["section"], r["target"], r["shape"]): r for r in kernel["rows"]}
    att = {t: r for (s, t, _), r in rows.items() if s == "attention"}
    # Triton kernels with fp32 inputs: IEEE fp32 dots (no TF32); library baselines claim nothing.
    assert att["triton"]["dot_precision"] == att["triton_tma"]["dot_precision"] == "ieee"
    assert "dot_precision" not in att["sdpa_math"]
    assert att["triton"]["tflops"] > 0
    assert att["triton"]["load_path"] == "pointer"
    # the kernel's launcher records which path it took: never "unrecorded"
    assert att["triton_tma"]["load_path"] in {"tma", "pointer"} and att["triton_tma"]["load_path_reason"]
    for (s, t, _), r in rows.items():
        if t.startswith("triton") and s in ("fused", "e2e"):
            assert r["dot_precision"] == "ieee" and r["load_path"] == "pointer", (s, t)
    # every float output compared with the fp32 reference, within the fp32 bound
    for r in att.values():
        (p,) = r["parity"]
        assert p["passed"] and p["rel_fro"] <= 1e-4
    # the stitch bench: the reference's window grid, labels identical to the reference's
    st = {t: r for (s, t, _), r in rows.items() if s == "stitch"}
    assert st["triton_labels"]["windows"] == len(window_grid(12, 20, 10, 6))
    for t in ("triton_labels", "triton_labels_probs", "naive_pad_add"):
        assert st[t]["parity"][0]["label_agreement"] == 1.0, t
    # the table printed last is the report's own Markdown
    assert stdout.rstrip().endswith(rep.markdown(kernel).rstrip())
    assert "| triton_tma |" in stdout and "(speedup vs sdpa_math)" in stdout


def test_report_round_trips(tmp_path, kernel_report):
    kernel, _, _ = kernel_report
    body = {k: v for k, v in kernel.items() if k != "schema"}
    paths = rep.write_report(body, tmp_path / "k.json", png=False)
    assert paths == [tmp_path / "k.json", tmp_path / "k.md"]
    assert rep.read_report(tmp_path / "k.json") == kernel
    assert (tmp_path / "k.md").read_text() == rep.markdown(kernel)
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temporaries behind


def test_report_refuses_a_broken_envelope(tmp_path):
    row = {"target": "t", "shape": "s", "status": "ok", "median_ms": 1.0, "parity": []}  # no p10/p90/...
    with pytest.raises(ValueError, match="lacks p10_ms"):
        rep.write_report({"kind": "kernel", "machine": {}, "config": {}, "rows": [row]}, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()
    with pytest.raises(ValueError, match="lacks reason"):
        rep.validate({"schema": rep.SCHEMA, "kind": "model", "machine": {}, "config": {},
                      "rows": [{"target": "t", "shape": "s", "status": "skipped"}]})
    (tmp_path / "old.json").write_text(json.dumps({"schema": "dinov3-deploy-bench/0", "kind": "model",
                                                   "machine": {}, "config": {}, "rows": []}))
    with pytest.raises(ValueError, match="schema"):
        rep.read_report(tmp_path / "old.json")


def test_cpu_timing_counts_warmup_and_returns_every_sample():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.002)

    t = timing.measure_kernel(fn, cuda=False, warmup=2, iters=5)
    assert len(calls) == 7 and len(t.samples_ms) == 5 and t.clock == timing.CLOCK_CPU
    s = t.summary()
    assert 2.0 <= s["min_ms"] <= s["p10_ms"] <= s["median_ms"] <= s["p90_ms"] < 1000
    assert s["iters"] == 5
    with pytest.raises(ValueError):
        timing.measure(fn, iters=0)


def test_gpu_kernel_timing_is_do_bench_with_every_sample(monkeypatch):
    """On a GPU, kernels are timed by triton.testing.do_bench (L2 flushed before each sample),
    asked for all samples, with the warm-up / repetition budgets in milliseconds."""
    import triton.testing

    seen = {}

    def fake_do_bench(fn, warmup=25, rep=100, grad_to_none=None, quantiles=None, return_mode="mean"):
        seen.update(warmup=warmup, rep=rep, return_mode=return_mode)
        return [3.0, 1.0, 2.0]

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    t = timing.measure_kernel(lambda: None, cuda=True, warmup_ms=10, rep_ms=50)
    assert seen == {"warmup": 10, "rep": 50, "return_mode": "all"}
    assert t.clock == timing.CLOCK_DO_BENCH and t.samples_ms == [3.0, 1.0, 2.0] and t.median_ms == 2.0


def test_timed_row_reports_failures_and_parity_failures():
    def cpu_timer(f):
        return timing.measure(f, warmup=0, iters=1)

    def boom():
        raise RuntimeError("no such backend on this card")

    r = timed_row({"target": "x", "shape": "s"}, boom, cpu_timer)
    assert r["status"] == "failed" and "no such backend" in r["reason"] and "median_ms" not in r
    bad = OutputParity("out", "s", [1], rel_fro=0.5, passed=False, failures=["rel_fro"])
    r = timed_row({"target": "x", "shape": "s"}, lambda: 1, cpu_timer, check=lambda out: [bad], flops=2e9)
    assert r["status"] == "parity-failed" and r["parity"][0]["rel_fro"] == 0.5 and r["tflops"] > 0


def test_dot_precision_names_ieee_for_fp32_only():
    assert dot_precision(torch.float32) == "ieee"
    assert dot_precision(torch.bfloat16) == "bfloat16" and dot_precision(torch.float16) == "float16"


def test_plot_labels_sit_above_the_error_bars():
    """Each bar's label is drawn above its p90 whisker (on the bar top, the whisker ran through it)."""
    import matplotlib.pyplot as plt

    rows = [{"target": t, "shape": s, "status": "ok", "median_ms": m, "p10_ms": m * 0.7, "p90_ms": m * 1.6}
            for t, m0 in (("torch-fp32-sdpa", 10.0), ("onnxruntime-cpu", 6.0)) for s, m in (("1x32x32", m0),
                                                                                           ("2x32x32", 2 * m0))]
    report = {"rows": rows, "config": {"title": "t"}, "machine": {"gpu": None, "cpu_count": 2}}
    fig = rep.figure(report)
    try:
        ax = fig.axes[0]
        labels = {t.get_text(): t.xy[1] for t in ax.texts}
        for r in rows:
            assert labels[f"{r['median_ms']:.1f}"] >= r["p90_ms"]
        assert ax.get_ylim()[1] > max(r["p90_ms"] for r in rows)
    finally:
        plt.close(fig)

"""Multi-head artifacts downstream: `infer` writes every task's results per image (seg from the sliding
windows, the other tasks from the whole image), each equal to its single-head artifact's; `bench` times
the one graph beside each head alone and reports the ratios the multi-head goal is read from."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dinov3_deploy.cli import cli
from dinov3_deploy.runtime.inference import output_files

MODEL = "vit_tiny_test"
SHAPES = ["--static", "64x64", "--batch", "1"]
TASKS = ("seg", "depth", "cls")
HEADS = {"seg": dict(n_classes=5, layers="four_last"), "depth": dict(layers="four_even"), "cls": dict(n_classes=7)}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Three heads "trained" on random backbone seed 3 (release-like random heads), the multi-head
    artifact of all three, and the single-head seg and depth artifacts of the same checkpoints."""
    from dinov3_deploy.reference.factory import build_task_model, random_backbone
    from dinov3_deploy.reference.head_checkpoint import save_head_checkpoint

    root = tmp_path_factory.mktemp("downstream")
    backbone = random_backbone(MODEL, 3)
    heads = {t: str(save_head_checkpoint(root / f"{t}-head", build_task_model(t, backbone, seed=10 + i, **HEADS[t]),
                                         backbone_seed=3)) for i, t in enumerate(TASKS)}

    def export(out, *heads_args):
        res = CliRunner().invoke(cli, ["export", *SHAPES, "--no-verify", "--out", str(out),
                                       *[a for h in heads_args for a in ("--head", h)]])
        assert res.exit_code == 0, res.output
        return out

    multi = export(root / "multi", *(heads[t] for t in TASKS))
    singles = {t: export(root / f"single-{t}", heads[t]) for t in ("seg", "depth")}
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 112, 3), dtype=np.uint8)).save(images / "sub" / "a.png")
    return multi, singles, images


def _infer(art, images, out, *extra):
    return CliRunner().invoke(cli, ["infer", str(art), str(images), "--demo", "1", "-o", str(out), *extra])


def test_infer_writes_every_tasks_results_equal_to_the_single_head_artifacts(artifacts, tmp_path):
    multi, singles, images = artifacts
    res = _infer(multi, images, tmp_path / "multi")
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # rich wraps the summary line
    assert "seg on windows, depth+cls on the whole image" in said
    names = ["sub/a.png", "synthetic_0"]
    for name in names:
        for task in TASKS:
            for f in output_files(task, name):
                assert (tmp_path / "multi" / f).is_file(), f
    listed = json.loads((tmp_path / "multi" / "predictions.json").read_text())
    assert listed["summary"]["tasks"] == {"seg": "sliding windows", "depth": "whole image", "cls": "whole image"}
    by_image = {p["image"]: p for p in listed["predictions"]}
    assert sorted(by_image) == sorted(names)
    for p in by_image.values():
        assert p["task"] == "multi" and set(p["tasks"]) == set(TASKS)
        assert p["tasks"]["seg"]["classes"] and p["tasks"]["depth"]["depth_m"]["max"] > 0
        assert len(p["tasks"]["cls"]["top5"]) == 5

    for task, art in singles.items():
        res = _infer(art, images, tmp_path / task)
        assert res.exit_code == 0, res.output
    for name in names:
        got = np.asarray(Image.open(tmp_path / "multi" / f"{name}_labels.png"))
        want = np.asarray(Image.open(tmp_path / "seg" / f"{name}_labels.png"))
        assert got.shape == want.shape and (got == want).all(), name
        got, want = (np.load(tmp_path / d / f"{name}_depth.npy") for d in ("multi", "depth"))
        assert got.shape == want.shape
        assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-5, name


def test_infer_refuses_to_replace_any_tasks_file(artifacts, tmp_path):
    """The existing-output check plans every task's files: a depth map alone in --out is enough."""
    multi, _, images = artifacts
    out = tmp_path / "out"
    out.mkdir()
    (out / "synthetic_0_depth.npy").write_bytes(b"keep me")
    res = _infer(multi, images, out)
    assert res.exit_code == 2
    assert "synthetic_0_depth.npy" in res.output and "--overwrite" in res.output
    assert (out / "synthetic_0_depth.npy").read_bytes() == b"keep me"
    assert sorted(p.name for p in out.iterdir()) == ["synthetic_0_depth.npy"]


def test_bench_reports_the_multi_head_graph_next_to_each_head_alone(artifacts, tmp_path):
    multi, _, _ = artifacts
    res = CliRunner().invoke(cli, ["bench", str(multi), "--backend", "onnxruntime-cpu", "--attn", "sdpa",
                                   "--warmup", "0", "--iters", "1", "--out", str(tmp_path), "--name", "r", "--no-plot"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"] == "dinov3-deploy-bench/2" and report["config"]["tasks"] == list(TASKS)
    rows = {r["target"]: r for r in report["rows"]}
    for base in ("onnxruntime-cpu", "torch-fp32-sdpa"):
        assert rows[base]["graph"] == "multi-head"
        for task in TASKS:
            single = rows[f"{base} [{task} only]"]
            assert (single["graph"], single["head"], single["multi_target"]) == ("single-head", task, base)
            assert single["status"] == "ok", single  # its own outputs, within the fp32 thresholds
            assert {p["output"] for p in single["parity"]} == {"cls.logits" if task == "cls" else
                                                               "depth.depth" if task == "depth" else "seg.logits"}
    entries = {e["target"]: e for e in report["multi_head"]}
    assert set(entries) == {"onnxruntime-cpu", "torch-fp32-sdpa"}
    for base, e in entries.items():
        singles = [rows[f"{base} [{t} only]"]["median_ms"] for t in TASKS]
        assert e["multi_ms"] == rows[base]["median_ms"]
        assert e["single_ms"] == dict(zip(TASKS, singles))
        assert e["sum_singles_ms"] == pytest.approx(sum(singles), rel=1e-3)
        assert e["multi_over_seg"] == pytest.approx(e["multi_ms"] / singles[0], rel=1e-3)
        assert e["multi_over_sum"] == pytest.approx(e["multi_ms"] / sum(singles), rel=1e-3)
    md = (tmp_path / "r.md").read_text()
    assert "multi / seg-only" in md and "onnxruntime-cpu [depth only]" in md


def test_comparison_pairs_each_multi_row_with_its_own_singles():
    from dinov3_deploy.bench.multi_head import comparison

    rows = [{"target": "m", "shape": "1x8x8", "graph": "multi-head", "median_ms": 11.0},
            {"target": "m [seg only]", "shape": "1x8x8", "graph": "single-head", "head": "seg", "multi_target": "m",
             "median_ms": 10.0},
            {"target": "m [cls only]", "shape": "1x8x8", "graph": "single-head", "head": "cls", "multi_target": "m",
             "median_ms": 9.0},
            {"target": "m [seg only]", "shape": "2x8x8", "graph": "single-head", "head": "seg", "multi_target": "m",
             "median_ms": 99.0},
            {"target": "x [seg only]", "shape": "1x8x8", "graph": "single-head", "head": "seg", "multi_target": "x",
             "median_ms": 1.0}]
    (e,) = comparison(rows, ["seg", "cls"])
    assert e == {"target": "m", "shape": "1x8x8", "multi_ms": 11.0, "single_ms": {"seg": 10.0, "cls": 9.0},
                 "sum_singles_ms": 19.0, "multi_over_seg": 1.1, "multi_over_sum": round(11 / 19, 4)}
    rows[2] = {**rows[2], "status": "failed"}
    del rows[2]["median_ms"]
    (e,) = comparison(rows, ["seg", "cls"])
    assert e["sum_singles_ms"] is None and e["multi_over_sum"] is None and e["multi_over_seg"] == 1.1


def test_interleaved_timing_alternates_targets_and_keeps_the_row_envelope():
    """Rows compared with each other are timed in rounds, so a load change on a shared machine hits
    every target alike; a target that fails mid-run is reported, the others still timed."""
    from dinov3_deploy.bench.harness import Shape, Target, run_benchmark
    from dinov3_deploy.bench.report import validate

    calls: list[str] = []

    def target(name: str, fail_at: int | None = None) -> Target:
        def call(x):
            calls.append(name)
            if fail_at is not None and calls.count(name) > fail_at:
                raise RuntimeError("boom")
            return x

        return Target(name, "fp32", prepare=lambda b: b, call=call, fetch=lambda o: {"logits": o})

    ref = target("ref")
    rows = run_benchmark([target("a"), target("b"), target("c", fail_at=2), Target("d", "fp32", skip_reason="no")],
                         [Shape(1, 2, 2)], lambda s: np.ones((1, 3), np.float32), ref, "cls", warmup=1, iters=3,
                         interleave=True)
    # reference, first calls, then rounds of a, b, c (c fails in the second round and drops out)
    assert calls == ["ref", "a", "b", "c", "a", "b", "c", "a", "b", "c", "a", "b", "a", "b"]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "skipped"]
    assert rows[0]["iters"] == 3 and rows[0]["interleaved"] and "boom" in rows[2]["reason"]
    validate({"schema": "dinov3-deploy-bench/2", "kind": "model", "machine": {}, "config": {}, "rows": rows})

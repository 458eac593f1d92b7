"""`dinov3-deploy bench` end to end on the CPU: reports are written and hold measured rows with
parity. Nothing here asserts a speed: timings on a shared 2-core machine are not a contract."""

import json

from cli_helpers import export_tiny
from click.testing import CliRunner

from dinov3_deploy.cli import cli


def _bench(tmp_path, *args):
    res = CliRunner().invoke(cli, ["bench", *args, "--warmup", "1", "--iters", "2", "--out", str(tmp_path),
                                   "--name", "r"])
    return res


def test_bench_model_writes_json_markdown_png(tmp_path):
    res = _bench(tmp_path, "--model", "vit_tiny_test", "--task", "seg", "--size", "32x48", "--batch", "1,2")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"].startswith("dinov3-deploy-bench/")
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["versions"]["torch"]
    rows = {(r["target"], r["shape"]): r for r in report["rows"]}
    for shape in ("1x32x48", "2x32x48"):
        for impl in ("sdpa", "math"):
            row = rows[(f"torch-fp32-{impl}", shape)]
            assert row["status"] == "ok" and row["iters"] == 2 and row["median_ms"] > 0
            assert row["images_per_s"] > 0
            (logits,) = [p for p in row["parity"] if p["output"] == "logits"]
            assert logits["rel_fro"] <= report["thresholds"]["fp32"]["max_rel_fro"]
            assert logits["label_agreement"] == 1.0
        # Triton needs a GPU: reported as skipped with the reason, never silently dropped.
        assert rows[("torch-fp32-triton", shape)]["status"] == "skipped"
    assert (tmp_path / "r.md").read_text().count("| torch-fp32-sdpa |") == 2
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_artifact_times_onnxruntime_against_reference(tmp_path):
    art = export_tiny(tmp_path, "features")
    res = _bench(tmp_path, str(art), "--batch", "2", "--size", "32x64", "--no-pytorch", "--no-plot")
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    ort = [r for r in rows if r["target"] == "onnxruntime-cpu"]
    assert len(ort) == 1 and ort[0]["status"] == "ok" and ort[0]["shape"] == "2x32x64"
    assert {p["output"] for p in ort[0]["parity"]} == {"cls", "storage", "patch"}
    assert all(p["rel_fro"] < 1e-4 for p in ort[0]["parity"])
    assert not (tmp_path / "r.png").exists()


def test_bench_rejects_shapes_outside_the_artifact(tmp_path):
    art = export_tiny(tmp_path, "features")
    res = _bench(tmp_path, str(art), "--size", "40x40")
    assert res.exit_code == 2 and "multiples of 16" in res.output and "Traceback" not in res.output


def test_bench_bad_options_are_clear(tmp_path):
    res = _bench(tmp_path, "--model", "vit_tiny_test", "--attn", "flash9")
    assert res.exit_code == 2 and "'--attn'" in res.output and "sdpa, math, triton" in res.output
    res = _bench(tmp_path, "--model", "vit_tiny_test", "--batch-sizes", "0")
    assert res.exit_code == 2 and "positive integers" in res.output


def test_bench_compares_the_patch_block_outputs_of_a_feature_layers_artifact(tmp_path):
    """A --feature-layers artifact's extra outputs are part of its contract: the bench reference
    computes them too, so they are compared (a reference without them compared nothing)."""
    art = tmp_path / "art"
    res = CliRunner().invoke(cli, ["export", "--task", "features", "--model", "vit_tiny_test", "--feature-layers",
                                   "3", "--batch", "1", "--height", "32", "--no-verify", "--out", str(art)])
    assert res.exit_code == 0, res.output
    res = _bench(tmp_path, str(art), "--no-plot")
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    (ort,) = [r for r in rows if r["target"] == "onnxruntime-cpu"]
    assert ort["status"] == "ok"
    compared = {p["output"] for p in ort["parity"]}
    assert compared == {"cls", "storage", "patch", "patch_block1", "patch_block2"}  # vit_tiny_test: 4 blocks
    assert all(p["passed"] and p["rel_fro"] < 1e-4 for p in ort["parity"])
    # the PyTorch targets build the same contract, so they are timed and compared on every output too
    (eager,) = [r for r in rows if r["target"] == "torch-fp32-sdpa"]
    assert eager["status"] == "ok" and {p["output"] for p in eager["parity"]} == compared


def test_bench_e2e_reports_images_per_second_per_backend_and_stitch(tmp_path):
    from dinov3_deploy.bench.e2e import synthetic_images
    from dinov3_deploy.bench.report import validate

    art = export_tiny(tmp_path, "seg")
    synthetic_images(tmp_path / "imgs", 2, 40, 70)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")  # reported and left out, as infer does
    res = CliRunner().invoke(cli, ["bench", str(art), "--e2e", str(tmp_path / "imgs"), "--backend",
                                   "torch,onnxruntime", "--stitch", "torch", "--window", "32", "--batch-windows", "2",
                                   "--warmup", "0", "--iters", "1", "--no-plot", "--out", str(tmp_path), "--name", "r"])
    assert res.exit_code == 0, res.output
    report = validate(json.loads((tmp_path / "r.json").read_text()))
    assert report["config"]["mode"] == "e2e" and report["config"]["images"] == 2
    assert "(2 images)" in report["config"]["title"]
    assert [f["image"] for f in report["config"]["unreadable"]] == ["broken.png"]
    assert "broken.png" in res.output
    rows = {r["backend"]: r for r in report["rows"]}
    assert set(rows) == {"torch", "onnxruntime"}
    for r in rows.values():
        assert r["status"] == "ok" and r["stitch"] == "torch", r
        assert r["images_per_s"] > 0 and r["windows_per_pass"] == 2 * 3  # 40x70 -> 32x56: 3 windows an image
        assert [p["label_agreement"] for p in r["parity"]] == [1.0, 1.0]  # same labels as the reference path
        assert 0 < r["stitch_share"] < 1
    assert rows["onnxruntime"]["target"] == "e2e onnxruntime-cpu + stitch torch"
    table = (tmp_path / "r.md").read_text()
    assert "e2e onnxruntime-cpu + stitch torch" in table
    # only labels were compared: the parity cell gives no relative error
    assert "| labels 100.00% ok |" in table and "| rel " not in table
    # --e2e needs a seg artifact, and says so.
    res = _bench(tmp_path, "--e2e", str(tmp_path / "imgs"))
    assert res.exit_code == 2 and "--e2e needs an ARTIFACT" in res.output


def test_default_outputs_stay_out_of_tracked_folders():
    """bench's reports and verify --per-block's table go to out/ (git-ignored) unless --out says where:
    bench/results/ receives only what a developer publishes, and the working folder stays the user's."""
    import subprocess
    from pathlib import Path

    from dinov3_deploy.commands.verify import PER_BLOCK_ROOT

    (out,) = [p for p in cli.get_command(None, "bench").params if p.name == "out"]
    assert not out.default.startswith("bench/results")
    repo = Path(__file__).resolve().parents[1]
    for path in (f"{out.default}/r.json", f"{PER_BLOCK_ROOT}/a-per-block/per_block.json"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=repo)
        assert ignored.returncode == 0, f"{path} is not git-ignored"


def test_help_says_what_each_command_does_and_what_auto_selects():
    """Top-level --help shows every summary whole; each --backend help says which selection auto makes
    for its command; verify says up front that it rewrites the artifact."""
    import re

    from dinov3_deploy.runtime.backends import AUTO_MEANS

    top = CliRunner().invoke(cli, ["--help"]).output
    assert "..." not in top.split("Commands:")[1], top
    assert "rewrites its parity.json and manifest.json unless --no-write" in " ".join(top.split())
    for command, means in AUTO_MEANS.items():
        text = " ".join(CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output.split())
        assert re.sub(r"\s+", " ", means) in text, (command, text)

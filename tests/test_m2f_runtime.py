"""Mask2Former artifacts at run time: `bench --e2e` times them like the linear head's (the release's
windows, labels against the reference path). One fp32 export of the tiny segmentor is shared by the
module (about 3 minutes under load on the 2-core VM), so these cells are slow."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from m2f_helpers import export_m2f, tiny_m2f_head

from dinov3_deploy.cli import cli


@pytest.fixture(scope="module")
def m2f_head(tmp_path_factory):
    return tiny_m2f_head(tmp_path_factory.mktemp("m2f"))


@pytest.fixture(scope="module")
def m2f_artifact(m2f_head, tmp_path_factory):
    return export_m2f(m2f_head, tmp_path_factory.mktemp("m2f_art") / "art")


@pytest.mark.slow
def test_bench_e2e_times_an_m2f_artifact(m2f_artifact, tmp_path):
    from dinov3_deploy.bench.e2e import synthetic_images
    from dinov3_deploy.bench.report import validate

    synthetic_images(tmp_path / "imgs", 2, 70, 100)
    res = CliRunner().invoke(cli, ["bench", str(m2f_artifact), "--e2e", str(tmp_path / "imgs"), "--backend",
                                   "onnxruntime", "--window", "64", "--batch-windows", "2", "--warmup", "0",
                                   "--iters", "1", "--no-plot", "--out", str(tmp_path), "--name", "r"])
    assert res.exit_code == 0, res.output
    report = validate(json.loads((tmp_path / "r.json").read_text()))
    (row,) = report["rows"]
    assert row["status"] == "ok" and row["images_per_s"] > 0, row
    # 70x100 -> the 64x91 view; the release's stride 596/896 of 64 is 43: 2 windows an image
    assert row["windows_per_pass"] == 2 * 2
    assert [p["label_agreement"] for p in row["parity"]] == [1.0, 1.0]  # the reference: torch fp32, summed scores
    assert 0 < row["stitch_share"] < 1
    # the linear head's Triton stitch is refused for M2F, in one line
    res = CliRunner().invoke(cli, ["bench", str(m2f_artifact), "--e2e", str(tmp_path / "imgs"), "--backend",
                                   "onnxruntime", "--stitch", "triton", "--window", "64", "--warmup", "0",
                                   "--iters", "1", "--no-plot", "--out", str(tmp_path), "--name", "t"])
    assert res.exit_code == 2 and "--stitch triton is the linear head's kernel" in res.output

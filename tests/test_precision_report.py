"""bench.precision_report, the before/after table of docs/precision.md, end to end on the tiny ViT:
with a head our trainer wrote on the outliers stress backbone (what `--head` is for: labels with a
trained head's margins instead of a random head's near-ties)."""

import json

from click.testing import CliRunner

from dinov3_deploy.bench.precision_report import main
from dinov3_deploy.cli import cli


def test_report_on_a_trained_head_of_the_stress_backbone(tmp_path, capsys):
    res = CliRunner().invoke(cli, ["train", "--random-init", "outliers", "--iters", "20", "--train-size", "16",
                                   "--val-size", "2", "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "report.json"
    assert main(["--head", str(tmp_path / "run" / "head"), "--images", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["init"] == "outliers" and report["head"]["iters"] == 20 and report["model"] == "vit_tiny_test"
    rows = {(r["precision"], r["variant"]): r for r in report["rows"]}
    assert not rows["fp16", "naive"]["finite"]  # the stress is real: an unfolded fp16 graph overflows
    assert rows["fp16", "folded+islands"]["passed"] and rows["bf16", "exported"]["passed"]
    assert rows["bf16", "exported"]["fp32_islands"] == ["backbone.patch_embed (precision)",
                                                         "backbone.blocks (residual)"]
    assert rows["bf16", "exported"]["rel_fro"] < rows["bf16", "naive"]["rel_fro"]
    printed = capsys.readouterr().out
    assert "| fp16 | naive | no |" in printed and str(out) in printed

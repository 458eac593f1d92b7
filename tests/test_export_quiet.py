"""An export prints no "torchvision is not installed. Skipping torchvision::nms" lines: torch.onnx's
op registry logs one per torchvision op when torchvision is absent (as in a fresh install), and
they read like a broken install although no DINOv3 graph uses those ops."""

from __future__ import annotations

import importlib.util
import logging

from click.testing import CliRunner

from dinov3_deploy.cli import cli


def test_export_output_has_no_torchvision_probe_lines(tmp_path, monkeypatch, caplog):
    real_find_spec = importlib.util.find_spec
    probed = []

    def without_torchvision(name, *args, **kwargs):
        if name == "torchvision":  # a fresh install: torchvision is no dependency of ours
            probed.append(name)
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_torchvision)
    caplog.set_level(logging.WARNING)
    r = CliRunner().invoke(cli, ["export", "--model", "vit_tiny_test", "--height", "64", "--no-verify",
                                 "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert probed, "the exporter no longer probes torchvision: this test checks nothing"
    assert "torchvision" not in r.output and "torchvision" not in caplog.text

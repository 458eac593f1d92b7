"""`verify --per-block`: the debug graph's block outputs are the reference's block outputs, and a
fault planted in one block of a tampered artifact is found at that block, earlier blocks passing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from cli_helpers import export_tiny
from click.testing import CliRunner
from per_block_helpers import tamper_weight

from dinov3_deploy.artifact import load_artifact
from dinov3_deploy.cli import cli
from dinov3_deploy.errors import DeployError
from dinov3_deploy.runtime.runners import artifact_backends
from dinov3_deploy.verification.per_block import (
    find_block_outputs,
    per_block_report,
    save_per_block,
)


def _export(tmp_path_factory, model: str, task: str, height: str):
    art = tmp_path_factory.mktemp("pb") / f"{model}-{task}"
    res = CliRunner().invoke(cli, ["export", "--task", task, "--model", model, "--batch", "1:1:2",
                                   "--height", height, "--no-verify", "--out", str(art)])
    assert res.exit_code == 0, res.output
    return art


@pytest.fixture(scope="module")
def vit_features(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("pb"), "features")  # shared with other files: exported once


def _tamper(src, dst, block: int, factor: float = 1.5):
    """The artifact with block `block`'s last MLP linear scaled (per_block_helpers.tamper_weight)."""
    return tamper_weight(src, dst, f"model.backbone.blocks.{block}.mlp.fc2", factor)


def test_block_outputs_match_the_reference_on_the_untouched_artifact(vit_features):
    art = load_artifact(vit_features)
    report = per_block_report(art, artifact_backends(art))
    assert report["backend"] == "onnxruntime-cpu" and report["family"] == "vit"
    assert [r["block"] for r in report["blocks"]] == [0, 1, 2, 3]
    assert all(r["passed"] and r["rel_fro"] < 1e-5 for r in report["blocks"])
    assert report["first_failing_block"] is None and all(o["passed"] for o in report["outputs"])
    # tokens [B, 1 + storage + patches, D], as the reference's block returns them
    assert all(len(r["shape"]) == 3 and r["shape"][-1] == 64 for r in report["blocks"])


@pytest.mark.parametrize("block", [1, 2])
def test_a_fault_planted_in_one_block_is_found_at_that_block(vit_features, tmp_path, block):
    art = _tamper(vit_features, tmp_path / "tampered", block)
    report = per_block_report(art, artifact_backends(art))
    rows = report["blocks"]
    assert report["first_failing_block"] == block
    assert all(r["passed"] and r["rel_fro"] < 1e-5 for r in rows[:block])
    assert all(not r["passed"] for r in rows[block:])  # carried by every later block
    assert not all(o["passed"] for o in report["outputs"])


def test_cli_prints_marks_and_saves_the_table_and_plot(vit_features, tmp_path):
    _tamper(vit_features, tmp_path / "tampered", 2)
    out = tmp_path / "pb_out"
    res = CliRunner().invoke(cli, ["verify", str(tmp_path / "tampered"), "--no-write", "--backend", "onnxruntime-cpu",
                                   "--per-block", "--per-block-out", str(out)])
    assert res.exit_code == 1, res.output  # the final outputs fail parity too
    assert "first block over threshold: 2" in res.output
    data = json.loads((out / "per_block.json").read_text())
    assert data["first_failing_block"] == 2 and data["backend"] == "onnxruntime-cpu"
    assert (out / "per_block.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the debug graph was written elsewhere: the artifact holds what it held
    assert sorted(p.name for p in (tmp_path / "tampered").iterdir()) == ["manifest.json", "model.onnx", "parity.json"]


def test_output_inside_the_artifact_is_refused(vit_features, tmp_path):
    report = {"artifact": str(vit_features)}
    with pytest.raises(DeployError, match="--per-block-out must be outside the artifact"):
        save_per_block(report, vit_features / "debug")


def test_a_graph_without_block_names_is_refused(vit_features):
    model = onnx.load(str(vit_features / "model.onnx"), load_external_data=False)
    assert len(find_block_outputs(model)) == 4
    for node in model.graph.node:
        del node.metadata_props[:]
    with pytest.raises(DeployError, match="names no backbone blocks"):
        find_block_outputs(model)


@pytest.mark.slow
@pytest.mark.parametrize("model,task,height", [("vit_tiny_swiglu_test", "seg", "32:64:64"),
                                               ("convnext_tiny_test", "seg", "64:64:128")])
def test_blocks_are_found_on_swiglu_and_convnext(tmp_path_factory, model, task, height):
    art = load_artifact(_export(tmp_path_factory, model, task, height))
    report = per_block_report(art, artifact_backends(art))
    assert [r["block"] for r in report["blocks"]] == [0, 1, 2, 3]
    assert all(r["passed"] and r["rel_fro"] < 1e-5 for r in report["blocks"])
    ranks = {len(r["shape"]) for r in report["blocks"]}
    assert ranks == ({4} if model.startswith("convnext") else {3})
    assert np.isfinite([r["ref_absmax"] for r in report["blocks"]]).all()

"""The artifact directory: atomic writes (a failure leaves nothing), sha256 of every file,
schema versions, and an export that fails midway leaving no artifact behind."""

from __future__ import annotations

import json

import pytest
from manifest_helpers import sample_manifest

from dinov3_deploy.artifact import SCHEMA_VERSION, ArtifactWriter, load_artifact
from dinov3_deploy.errors import ArtifactError
from dinov3_deploy.export import pipeline as export_pipeline


def write_demo(target, task="seg"):
    with ArtifactWriter(target) as w:
        (w.path / "model.onnx").write_bytes(b"onnx-bytes")
        (w.path / "sub").mkdir()
        (w.path / "sub" / "config.pbtxt").write_text("name: x\n")
        return w.finish(sample_manifest(task))


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_writer_hashes_every_file_and_renames(tmp_path):
    path = write_demo(tmp_path / "art")
    art = load_artifact(path)
    assert art.manifest.schema_version == SCHEMA_VERSION == 3
    assert set(art.manifest.files) == {"model.onnx", "sub/config.pbtxt"}  # the sample's own entry replaced
    assert art.manifest.files["model.onnx"].bytes == len(b"onnx-bytes")
    assert leftovers(tmp_path) == []


def test_a_failure_inside_the_writer_leaves_no_artifact(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), ArtifactWriter(tmp_path / "art") as w:
        (w.path / "model.onnx").write_bytes(b"half")
        raise RuntimeError("boom")
    assert not (tmp_path / "art").exists() and leftovers(tmp_path) == []


def test_existing_artifact_needs_overwrite(tmp_path):
    write_demo(tmp_path / "art")
    with pytest.raises(ArtifactError, match="--overwrite"):
        write_demo(tmp_path / "art")
    with ArtifactWriter(tmp_path / "art", overwrite=True) as w:
        (w.path / "model.onnx").write_bytes(b"new")
        w.finish(sample_manifest("depth"))
    assert load_artifact(tmp_path / "art").manifest.task == "depth"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("tamper", ["modify", "delete", "schema", "old-schema", "foreign", "garbage", "no-manifest",
                                    "no-field", "bad-type"])
def test_tampered_or_foreign_artifacts_fail_clearly(tmp_path, tamper):
    path = write_demo(tmp_path / "art")
    mpath = path / "manifest.json"
    m = json.loads(mpath.read_text())
    expect = {
        "modify": "sha256", "delete": "missing",
        "schema": "schema version 99, newer than the version 3 this dinov3-deploy reads: upgrade dinov3-deploy",
        "old-schema": "schema version 1, older than the versions 2-3 this dinov3-deploy reads: re-export",
        "foreign": "not a dinov3-deploy", "garbage": "not valid JSON", "no-manifest": "no manifest.json",
        "no-field": "manifest field input.shapes is missing",
        "bad-type": r"manifest field onnx.opset must be an integer, got '18'",
    }[tamper]
    if tamper == "modify":
        (path / "sub" / "config.pbtxt").write_text("name: y\n")  # same size, different bytes
    elif tamper == "delete":
        (path / "model.onnx").unlink()
    elif tamper == "schema":
        mpath.write_text(json.dumps({**m, "schema_version": 99}))
    elif tamper == "old-schema":
        mpath.write_text(json.dumps({**m, "schema_version": 1}))
    elif tamper == "no-field":
        del m["input"]["shapes"]
        mpath.write_text(json.dumps(m))
    elif tamper == "bad-type":
        m["onnx"]["opset"] = "18"
        mpath.write_text(json.dumps(m))
    elif tamper == "foreign":
        mpath.write_text(json.dumps({**m, "schema": "someone-else"}))
    elif tamper == "garbage":
        mpath.write_text("{not json")
    else:
        mpath.unlink()
    if tamper == "foreign":
        expect = "not a dinov3-deploy-artifact manifest"
    with pytest.raises(ArtifactError, match=expect):
        load_artifact(path)


def test_export_failing_midway_leaves_no_artifact(tmp_path, monkeypatch):
    """The ONNX is half written when the export dies: no artifact, no temporary directory."""
    import dinov3_deploy.export.onnx_graph as onnx_export

    def dying_export(module, path, shapes, **options):
        path.write_bytes(b"partial onnx")
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr(onnx_export, "export_onnx", dying_export)
    opts = export_pipeline.ExportOptions(out=tmp_path / "art", task="seg", model="vit_tiny_test",
                                         height="32:32:64")
    with pytest.raises(RuntimeError, match="killed mid-export"):
        export_pipeline.export_artifact(opts)
    assert list(tmp_path.iterdir()) == []

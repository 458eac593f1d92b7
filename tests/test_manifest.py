"""The typed manifest: it reads back what it wrote, its published JSON Schema describes exactly
its fields (and rejects a manifest that lacks one: the conftest hook that validates every written
manifest can fail), version mismatches say what to do, and `inspect` shows the schema version."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner
from manifest_helpers import sample_manifest, schema_errors

from dinov3_deploy import manifest as mf
from dinov3_deploy.artifact import ArtifactWriter
from dinov3_deploy.errors import ArtifactError


def test_from_dict_of_to_dict_is_the_same_manifest():
    for m in (sample_manifest(), sample_manifest("depth", engine=False)):
        assert mf.Manifest.from_dict(m.to_dict()) == m
        assert mf.Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m  # through JSON text too
    m = sample_manifest()
    m.head = m.classes = m.tensorrt = m.triton = m.export_seconds = None
    assert mf.Manifest.from_dict(m.to_dict()) == m


def test_sample_manifest_is_valid_and_a_missing_required_field_is_not():
    d = sample_manifest().to_dict()
    assert schema_errors(d) == []
    required = (("input",), ("input", "shapes", "multiple"), ("tensorrt", "flavor"), ("files", "model.onnx", "sha256"))
    for path in required:
        broken = json.loads(json.dumps(d))
        parent = broken
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]
        errors = schema_errors(broken)
        assert errors and any(f"'{path[-1]}' is a required property" in e for e in errors), (path, errors)
    assert schema_errors({**d, "extra": 1})  # no field the reader does not know
    assert schema_errors({**d, "schema_version": 1})
    bad_range = json.loads(json.dumps(d))
    bad_range["input"]["shapes"]["batch"] = [1, 2]
    assert schema_errors(bad_range)


# Each dataclass of the manifest and where the schema describes it.
SCHEMA_PLACES = {
    mf.Manifest: (), mf.BackboneInfo: ("$defs", "backbone"), mf.HeadInfo: ("$defs", "head"),
    mf.InputSpec: ("$defs", "input"), mf.Normalization: ("$defs", "input", "properties", "normalize"),
    mf.OutputSpec: ("$defs", "output"), mf.TensorInfo: ("$defs", "tensor"),
    mf.OutputsConfig: ("$defs", "outputs_config"), mf.Classes: ("$defs", "classes"), mf.OnnxInfo: ("$defs", "onnx"),
    mf.GraphInfo: ("$defs", "onnx", "properties", "graph"), mf.TensorRTInfo: ("$defs", "tensorrt"),
    mf.EngineProfile: ("$defs", "tensorrt", "properties", "profiles", "items"),
    mf.EngineTensor: ("$defs", "tensorrt", "properties", "io", "items"), mf.TritonInfo: ("$defs", "triton"),
    mf.TritonModel: ("$defs", "triton", "properties", "models", "items"), mf.FileEntry: ("$defs", "file"),
    mf.FoldInfo: ("$defs", "fold"), mf.IslandInfo: ("$defs", "island"),
    mf.QuantizationInfo: ("$defs", "quantization"),
    mf.KeptLayer: ("$defs", "quantization", "properties", "kept_layers", "items"),
}


def test_schema_describes_exactly_the_typed_fields():
    schema = mf.load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    nested = {c for c in vars(mf).values() if dataclasses.is_dataclass(c) and c.__module__ == mf.__name__}
    nested.discard(mf.DeployIO)
    assert nested == set(SCHEMA_PLACES)  # a new manifest type needs its place in the schema
    for cls, place in SCHEMA_PLACES.items():
        node = schema
        for key in place:
            node = node[key]
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(node["properties"]) == names, cls.__name__
        assert set(node["required"]) == names and node["additionalProperties"] is False, cls.__name__
    shapes = schema["$defs"]["input"]["properties"]["shapes"]
    assert set(shapes["properties"]) == set(shapes["required"]) == set(sample_manifest().input.shapes.to_dict())
    assert schema["properties"]["schema_version"]["const"] == mf.SCHEMA_VERSION == 3
    described = [p for p in schema["properties"].values() if "description" in p or "$ref" in p]
    assert len(described) == len(schema["properties"])


def test_schema_ships_with_the_package():
    from importlib.resources import files

    assert json.loads(files("dinov3_deploy").joinpath("manifest.schema.json").read_text()) == mf.load_schema()


def test_versions_other_than_ours_are_refused_with_what_to_do():
    d = sample_manifest().to_dict()
    with pytest.raises(ArtifactError, match=r"version 4, newer than the version 3 .* upgrade dinov3-deploy"):
        mf.Manifest.from_dict({**d, "schema_version": 4})
    with pytest.raises(ArtifactError, match=r"version 1, older than the versions 2-3 .* re-export"):
        mf.Manifest.from_dict({**d, "schema_version": 1})
    with pytest.raises(ArtifactError, match=r"unknown entries \['colour'\]"):
        mf.Manifest.from_dict({**d, "input": {**d["input"], "colour": "RGB"}})


def test_io_is_the_one_contract_readers_use():
    m = sample_manifest()
    m.input.dtype = "uint8"
    m.outputs_config = mf.OutputsConfig(seg_output="labels", feature_layers=3)
    assert m.io == mf.DeployIO(uint8_input=True, seg_output="labels", feature_layers=3,
                               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def test_engine_facts_the_manifest_does_not_know_are_an_error():
    facts = dataclasses.asdict(sample_manifest().tensorrt)
    del facts["file"]
    assert mf.TensorRTInfo.from_facts("model.engine", facts) == sample_manifest().tensorrt
    with pytest.raises(ArtifactError, match="unknown entries"):
        mf.TensorRTInfo.from_facts("model.engine", {**facts, "sparsity": True})


def test_inspect_prints_the_schema_version(tmp_path):
    from dinov3_deploy.cli import cli

    with ArtifactWriter(tmp_path / "art") as w:
        (w.path / "model.onnx").write_bytes(b"onnx")
        w.finish(sample_manifest())
    res = CliRunner().invoke(cli, ["inspect", str(tmp_path / "art")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert f"dinov3-deploy-artifact version {mf.SCHEMA_VERSION}" in res.output
    res = CliRunner().invoke(cli, ["inspect", "--json", str(tmp_path / "art")])
    assert json.loads(res.output)["schema_version"] == mf.SCHEMA_VERSION


def test_a_schema_2_manifest_still_reads_as_a_single_task_artifact():
    d = sample_manifest().to_dict()
    d["schema_version"] = 2
    del d["heads"]
    if d["head"] is not None:
        for key in ("task", "outputs", "classes"):
            del d["head"][key]
    m = mf.Manifest.from_dict(d)
    assert m.heads == [] and m.tasks == [d["task"]]
    assert m.output_name(d["task"], "logits") == "logits"

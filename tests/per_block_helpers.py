"""Planting a fault in one block of an artifact, for the per-block tests."""

from __future__ import annotations

import shutil

import onnx
from onnx import numpy_helper

from dinov3_deploy.artifact import file_entry, load_artifact
from dinov3_deploy.verification.per_block import node_scopes


def tamper_weight(src, dst, scope: str, factor: float = 1.5):
    """Copy the artifact, scale the 2-D weight of the first node of module `scope` that reads one
    (a linear's) in model.onnx, and rewrite the manifest's hash of it (the artifact still loads:
    only the numbers are wrong)."""
    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    node = next(n for n in model.graph.node if scope in node_scopes(n)
                and any(i in inits and len(inits[i].dims) == 2 for i in n.input))
    name = next(i for i in node.input if i in inits and len(inits[i].dims) == 2)
    weight = numpy_helper.to_array(inits[name])
    inits[name].CopyFrom(numpy_helper.from_array((weight * factor).astype(weight.dtype), name))
    onnx.save(model, str(dst / "model.onnx"))
    art = load_artifact(dst, check_hashes=False)
    art.manifest.files["model.onnx"] = file_entry(dst / "model.onnx")
    art.manifest.write(dst)
    return load_artifact(dst)

"""A Triton Inference Server model repository inside the artifact (`triton/`), so the artifact
scales out on an existing serving engine:

    triton/<name>_onnx/config.pbtxt + 1/model.onnx        backend "onnxruntime"
    triton/<name>_trt/config.pbtxt  + 1/model.plan        backend "tensorrt" (full TensorRT engines
                                                          only: Triton cannot load TensorRT-RTX ones)

A graph with TensorRT plugin nodes gets no onnxruntime model (ONNX Runtime cannot run them); its engine
carries the plugins' ahead-of-time PTX, so Triton's tensorrt backend runs it without our Python code.

Batch is the leading dimension (max_batch_size = the artifact's max batch) with dynamic
batching; H and W are variable (-1) within the exported ranges.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dinov3_deploy.manifest import GraphInfo, TensorInfo, TritonInfo, TritonModel

TRITON_DIR = "triton"
_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "uint8": "TYPE_UINT8",
          "int32": "TYPE_INT32", "int64": "TYPE_INT64"}


def _dims(shape: list) -> str:
    return "[ " + ", ".join(str(d) if isinstance(d, int) and d > 0 else "-1" for d in shape[1:]) + " ]"


def _tensor(t: TensorInfo) -> str:
    return f'  {{\n    name: "{t.name}"\n    data_type: {_TYPES[t.dtype]}\n    dims: {_dims(t.shape)}\n  }}'


def triton_config(name: str, backend: str, inputs: list[TensorInfo], outputs: list[TensorInfo], max_batch: int,
                  opt_batch: int, gpu: bool = True) -> str:
    """config.pbtxt text for one model (`backend`: onnxruntime | tensorrt)."""
    preferred = sorted({b for b in (opt_batch, max_batch) if 1 < b <= max_batch})
    lines = [
        f'name: "{name}"',
        f'backend: "{backend}"',
        f"max_batch_size: {max_batch}",
        "input [\n" + ",\n".join(_tensor(t) for t in inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor(t) for t in outputs) + "\n]",
        "dynamic_batching {"
        + (f"\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]" if preferred else "")
        + "\n  max_queue_delay_microseconds: 100\n}",
        f"instance_group [\n  {{\n    count: 1\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n  }}\n]",
    ]
    return "\n".join(lines) + "\n"


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # no second copy of the weights when the filesystem allows
    except OSError:
        shutil.copy2(src, dst)


def write_triton_repo(root: Path, model_name: str, graph: GraphInfo, shapes, onnx_files: list[str],
                      engine_file: str | None = None, engine_flavor: str | None = None,
                      plugins: list[str] | tuple[str, ...] = ()) -> TritonInfo:
    """Write `root/triton`; returns the manifest entry. `plugins`: the TensorRT plugins the graph's custom
    nodes need (manifest onnx.plugins)."""
    repo = root / TRITON_DIR
    models, notes = [], []
    max_b, opt_b = shapes.batch.max, shapes.batch.opt
    onnx_name = f"{model_name}_onnx"
    if plugins:
        notes.append(f"no onnxruntime model: the graph holds TensorRT plugin nodes ({', '.join(plugins)})")
    else:
        for f in onnx_files:
            _place(root / f, repo / onnx_name / "1" / f)
        (repo / onnx_name / "config.pbtxt").write_text(
            triton_config(onnx_name, "onnxruntime", graph.inputs, graph.outputs, max_b, opt_b))
        models.append(TritonModel(name=onnx_name, backend="onnxruntime"))
    if engine_file is not None:
        if engine_flavor == "tensorrt":
            trt_name = f"{model_name}_trt"
            _place(root / engine_file, repo / trt_name / "1" / "model.plan")
            (repo / trt_name / "config.pbtxt").write_text(
                triton_config(trt_name, "tensorrt", graph.inputs, graph.outputs, max_b, opt_b))
            models.append(TritonModel(name=trt_name, backend="tensorrt"))
        else:
            notes.append("no tensorrt model: Triton's tensorrt backend cannot load TensorRT-RTX engines "
                         "(export with --trt-flavor tensorrt for one)")
    return TritonInfo(dir=TRITON_DIR, models=models, notes=notes)

"""A complete typed manifest for tests that need one without exporting, and the JSON Schema
validation that tests/conftest.py applies to every manifest the test suite writes."""

from __future__ import annotations

import functools

from dinov3_deploy import manifest as mf
from dinov3_deploy.shapes import DimRange, ShapeSpec


@functools.cache
def _validator():
    import jsonschema

    schema = mf.load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(data: dict) -> list[str]:
    """Every way `data` breaks manifest.schema.json (empty when valid); a nullable object's
    errors are its own fields' (not just "not valid under any of the given schemas")."""

    def leaves(e):
        return [leaf for sub in e.context for leaf in leaves(sub)] if e.context else [e]

    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for top in _validator().iter_errors(data) for e in leaves(top)]


def sample_manifest(task: str = "seg", *, engine: bool = True) -> mf.Manifest:
    """A seg artifact's manifest with every optional part filled (ONNX, engine, Triton)."""
    shapes = ShapeSpec(DimRange(1, 2, 4), DimRange(32, 64, 96), DimRange(32, 64, 96), 16)
    pixel = mf.TensorInfo(name="pixel_values", dtype="float32",
                          shape=["batch", 3, "16*height_blocks", "16*width_blocks"])
    logits = mf.TensorInfo(name="logits", dtype="float32", shape=["batch", 2, "grid_h", "grid_w"])
    trt = mf.TensorRTInfo(
        file="model.engine", flavor="tensorrt-rtx", version="1.7.1", targets=["SM86"], strongly_typed=True,
        builder_optimization_level=3, workspace_bytes=1 << 30,
        profiles=[mf.EngineProfile(input="pixel_values", min=[1, 3, 32, 32], opt=[2, 3, 64, 64], max=[4, 3, 96, 96])],
        io=[mf.EngineTensor(name="pixel_values", mode="input", dtype="float", shape=[-1, 3, -1, -1]),
            mf.EngineTensor(name="logits", mode="output", dtype="float", shape=[-1, 2, -1, -1])],
        network_layers=10, engine_bytes=4, build_seconds=0.5, build_log=["[INFO] built"])
    return mf.Manifest(
        created_utc="2025-01-01T00:00:00Z", task=task, precision="fp16",
        backbone=mf.BackboneInfo(name="vit_tiny_test", family="vit", embed_dim=64, patch_size=16, input_multiple=16,
                              weights=None, random_weights=True),
        head=mf.HeadInfo(task=task, outputs=["logits"], head_type="linear", layers="last", n_classes=2,
                         checkpoint=None, random_weights=True,
                      spec={"task": task, "n_classes": 2, "mean": (0.485, 0.456, 0.406)}),
        source={"task": task, "backbone": "vit_tiny_test", "weights": None, "head": None, "seed": 0},
        input=mf.InputSpec(name="pixel_values", dtype="float32", layout="NCHW", color="RGB",
                        normalize=mf.Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                                in_graph=False),
                        value_range="(x/255 - mean) / std, done by the caller", resize="none", shapes=shapes),
        outputs=[mf.OutputSpec(name="logits", dtype="float32", shape=logits.shape, doc="class scores")],
        outputs_config=mf.OutputsConfig(seg_output="logits", feature_layers=0),
        classes=mf.Classes(names=["sky", "road"], palette=[[0, 0, 255], [128, 128, 128]]),
        onnx=mf.OnnxInfo(file="model.onnx", files=["model.onnx"], opset=18, plugins=[], external_data=False,
                      exporter="torch.onnx", export_example_shape=[2, 3, 64, 80],
                      graph=mf.GraphInfo(opset=18, inputs=[pixel], outputs=[logits], nodes=3,
                                      op_counts={"Conv": 1, "MatMul": 2}, fp32_islands={"Softmax": {"float32": 1}},
                                      compute_dtypes={"float16": 3})),
        tensorrt=trt if engine else None,
        triton=mf.TritonInfo(dir="triton", models=[mf.TritonModel(name="m_onnx", backend="onnxruntime")], notes=[]),
        toolchain={"torch": "2.14.1"},
        notes=["RANDOM WEIGHTS"],
        export_seconds=1.5,
        files={"model.onnx": mf.FileEntry(sha256="0" * 64, bytes=10)},
    )

"""`export --task seg --head M2F --format trt,triton-repo` with TensorRT-RTX (its builder needs no GPU):
the standard-op Mask2Former graph (GridSample per level) built into a dynamic-shape engine, the engine's
facts recorded in the manifest at build time (deserialising it needs a GPU), and the Triton repository
beside it. One export shared by the module; slow (minutes on 2 cores)."""

import json

import pytest
from click.testing import CliRunner

from dinov3_deploy.cli import cli

pytestmark = pytest.mark.slow
trt_rtx = pytest.importorskip("tensorrt_rtx")
BATCH, HEIGHT, WIDTH = (1, 1, 2), (64, 64, 96), (64, 64, 128)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from dinov3_deploy.reference import create_segmentor
    from dinov3_deploy.reference.formats.m2f_checkpoint import save_m2f_head

    root = tmp_path_factory.mktemp("m2f_trt")
    seg = create_segmentor("vit_tiny_test", hidden_dim=32, num_classes=5, seed=0)
    head = save_m2f_head(root / "head", seg, backbone="vit_tiny_test", backbone_seed=0)
    rng = [":".join(map(str, r)) for r in (BATCH, HEIGHT, WIDTH)]
    out = root / "art"
    res = CliRunner().invoke(cli, ["export", "--task", "seg", "--head", str(head), "--format", "trt,triton-repo",
                                   "--trt-flavor", "tensorrt-rtx", "--batch", rng[0], "--height", rng[1],
                                   "--width", rng[2], "--no-verify", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "manifest.json").read_text())


def test_rtx_engine_is_dynamic_and_its_facts_are_recorded(artifact):
    out, manifest = artifact
    trt = manifest["tensorrt"]
    assert trt["flavor"] == "tensorrt-rtx" and trt["version"] == trt_rtx.__version__ and trt["strongly_typed"]
    assert (out / trt["file"]).stat().st_size == trt["engine_bytes"] > 0
    (profile,) = trt["profiles"]
    assert profile["min"] == [BATCH[0], 3, HEIGHT[0], WIDTH[0]] and profile["max"] == [BATCH[2], 3, HEIGHT[2], WIDTH[2]]
    io = {t["name"]: t for t in trt["io"]}
    assert io["pixel_values"]["shape"] == [-1, 3, -1, -1]
    assert {n for n, t in io.items() if t["mode"] == "output"} == {"class_logits", "mask_logits", "scores"}
    assert io["mask_logits"]["shape"][-2:] == [-1, -1] and io["scores"]["shape"][-2:] == [-1, -1]
    assert trt["network_layers"] > 0 and trt["build_seconds"] > 0
    assert manifest["onnx"]["graph"]["op_counts"].get("GridSample") and manifest["onnx"]["plugins"] == []
    assert manifest["files"][trt["file"]]["sha256"]


def test_triton_repository_has_the_onnx_model_and_says_why_no_engine_model(artifact):
    from test_triton_repo import parse_pbtxt

    out, manifest = artifact
    triton = manifest["triton"]
    assert [m["backend"] for m in triton["models"]] == ["onnxruntime"]
    assert any("TensorRT-RTX" in n for n in triton["notes"])  # Triton's tensorrt backend cannot load RTX engines
    (model,) = triton["models"]
    cfg = parse_pbtxt((out / triton["dir"] / model["name"] / "config.pbtxt").read_text())
    assert [o["name"] for o in cfg["output"]] == ["class_logits", "mask_logits", "scores"]
    assert cfg["max_batch_size"] == BATCH[2] and cfg["input"][0]["dims"] == [3, -1, -1]
    assert (out / triton["dir"] / model["name"] / "1" / "model.onnx").stat().st_size > 0

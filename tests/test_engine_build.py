"""TensorRT engine builds on this CPU machine with tensorrt_rtx (its builder needs no GPU), and
the flavour switch. A real DINOv3 engine is built end to end in test_cli_export.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dinov3_deploy.errors import DeployError, MissingDependencyError
from dinov3_deploy.shapes import DimRange, ShapeSpec

trt_rtx = pytest.importorskip("tensorrt_rtx")

from dinov3_deploy.engines.build import (  # noqa: E402
    EngineBuildError,
    build_engine,
    network_from_onnx,
    profiles_from_shapes,
)
from dinov3_deploy.engines.trt_api import load_api  # noqa: E402


def conv_graph(path, uint8_nhwc: bool = False, dtype=TensorProto.FLOAT16):
    """pixel_values [b,3,h,w] -> (cast fp16) -> conv 3x3 -> relu -> (cast fp32) out; optional uint8 NHWC input."""
    nodes, inits = [], []
    if uint8_nhwc:
        inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", "h", "w", 3])
        nodes += [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
                  helper.make_node("Transpose", ["f"], ["x32"], perm=[0, 3, 1, 2])]
    else:
        inp = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, "h", "w"])
        nodes.append(helper.make_node("Identity", ["pixel_values"], ["x32"]))
    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np_dtype)
    inits.append(helper.make_tensor("w", dtype, w.shape, w.tobytes(), raw=True))
    nodes += [
        helper.make_node("Cast", ["x32"], ["x"], to=dtype),
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Cast", ["r"], ["out"], to=TensorProto.FLOAT),
    ]
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 8, "h", "w"])
    model = helper.make_model(helper.make_graph(nodes, "g", [inp], [out], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, path)
    return path


SHAPES = ShapeSpec(DimRange(1, 2, 8), DimRange(16, 32, 64), DimRange(16, 48, 64), 16)


def test_rtx_builds_a_strongly_typed_dynamic_engine_without_gpu(tmp_path):
    api = load_api("tensorrt-rtx")
    net = network_from_onnx(conv_graph(tmp_path / "m.onnx"), api)
    profiles = profiles_from_shapes(net, SHAPES)
    assert [(p.min, p.opt, p.max) for p in profiles] == [((1, 3, 16, 16), (2, 3, 32, 48), (8, 3, 64, 64))]
    engine = build_engine(net, profiles, workspace_gib=0.5, opt_level=1, targets=["SM86", "sm89"])
    path = engine.save(tmp_path / "m.engine")
    f = engine.facts
    assert path.stat().st_size == f["engine_bytes"] > 0
    assert f["flavor"] == "tensorrt-rtx" and f["version"] == trt_rtx.__version__
    assert f["targets"] == ["SM86", "SM89"] and f["strongly_typed"]
    assert f["builder_optimization_level"] == 1 and f["workspace_bytes"] == 1 << 29
    assert f["network_layers"] >= 4
    io = {t["name"]: t for t in f["io"]}
    assert io["pixel_values"]["shape"] == [-1, 3, -1, -1] and io["out"]["mode"] == "output"
    assert any("Input filename" in line for line in f["build_log"])  # the parser's log is kept


def test_profiles_follow_nhwc_uint8_inputs(tmp_path):
    api = load_api("tensorrt-rtx")
    net = network_from_onnx(conv_graph(tmp_path / "u8.onnx", uint8_nhwc=True), api)
    (p,) = profiles_from_shapes(net, SHAPES)
    assert p.name == "image" and p.min == (1, 16, 16, 3) and p.max == (8, 64, 64, 3)
    engine = build_engine(net, [p], workspace_gib=0.5, opt_level=0, targets=["SM89"])
    assert engine.facts["io"][0]["dtype"] == "uint8"


def test_flavour_switch_and_errors(tmp_path):
    assert load_api("auto").flavor == "tensorrt-rtx"  # no GPU here: tensorrt could not build anyway
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match=r"dinov3-deploy\[trt\]"):
            load_api("tensorrt")
    with pytest.raises(DeployError, match="--trt-flavor"):
        load_api("tensorrt-llm")
    api = load_api("tensorrt-rtx")
    net = network_from_onnx(conv_graph(tmp_path / "m.onnx"), api)
    with pytest.raises(DeployError, match="unknown TensorRT-RTX target"):
        build_engine(net, profiles_from_shapes(net, SHAPES), targets=["SM90"])  # Hopper: not an RTX target
    ok, reason = api.runnable_here(["SM89"])
    assert not ok and "GPU" in reason


def test_unparsable_onnx_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), bad)
    with pytest.raises(EngineBuildError, match="cannot parse"):
        network_from_onnx(bad, load_api("tensorrt-rtx"))


def test_polygraphy_builds_silently_and_its_failures_are_engine_build_errors(tmp_path, capsys):
    """Polygraphy's loaders do the build; its logger (stdout) must not break into the CLI's progress display."""
    from dinov3_deploy.engines.build import Profile

    api = load_api("tensorrt-rtx")
    net = network_from_onnx(conv_graph(tmp_path / "m.onnx"), api)
    build_engine(net, profiles_from_shapes(net, SHAPES), workspace_gib=0.5, opt_level=0, targets=["SM89"])
    inverted = Profile("pixel_values", (8, 3, 64, 64), (2, 3, 32, 32), (1, 3, 16, 16))  # min > max
    with pytest.raises(EngineBuildError, match="failed to build an engine.*Profile is not valid"):
        build_engine(net, [inverted], workspace_gib=0.5, targets=["SM89"])
    assert capsys.readouterr() == ("", "")
    with pytest.raises(DeployError, match="CURRENT cannot be combined"):
        build_engine(net, profiles_from_shapes(net, SHAPES), targets=["current", "SM89"])


def test_polygraphy_serves_the_flavour_we_chose_and_refuses_a_second_one():
    """Polygraphy binds tensorrt or tensorrt_rtx once per process; our --trt-flavor decides which."""
    import types

    from polygraphy import config

    from dinov3_deploy.engines.trt_api import TrtApi

    ptrt = load_api("tensorrt-rtx").polygraphy()  # before anything imports polygraphy.backend.trt: it binds then
    assert config.USE_TENSORRT_RTX and ptrt.loader.trt.__name__ == "tensorrt_rtx"
    other = TrtApi("tensorrt", types.ModuleType("tensorrt"))  # stands in for full TensorRT (not installable here)
    with pytest.raises(DeployError, match="already bound to 'tensorrt_rtx'.*separate process"):
        other.polygraphy()


def test_an_out_of_memory_build_names_the_option_to_raise_and_to_what():
    from dinov3_deploy.engines.build import memory_hint

    log = ["[ERROR] [localCheckMacros.cpp::getErrorStr::132] Error Code 2: OutOfMemory "
           "(Requested size was 4381224512 bytes.)"]
    hint = memory_hint(log, 4 << 30)
    assert "--trt-workspace-gib 4: raise it to 5 or more" in hint and "4381224512" in hint
    assert "--height" in memory_hint(log, None)  # no limit of ours: the shapes or the machine
    assert memory_hint(["[INFO] fine"], 4 << 30) == ""


@pytest.mark.parametrize("task", ["features", pytest.param("seg", marks=pytest.mark.slow)])
def test_default_export_shapes_build_with_the_default_workspace(tmp_path, task):
    """`export --task T --format onnx,trt` with every default (vits16, 1:1:8 x 256:512:1024, no workspace
    option) must build: a 4 GiB default workspace failed with OutOfMemory on these shapes."""
    from dinov3_deploy.export.pipeline import ExportOptions, export_artifact
    from dinov3_deploy.manifest import read_manifest

    path, _ = export_artifact(ExportOptions(out=tmp_path / task, task=task, formats=("onnx", "trt"),
                                            trt_flavor="tensorrt-rtx", verify=False))
    trt = read_manifest(path).tensorrt
    assert trt.profiles[0].max == [8, 3, 1024, 1024] and trt.engine_bytes > 0
    assert trt.workspace_bytes > 4381224512  # the limit it ran with, more than these shapes asked for


def test_full_tensorrt_fp32_engines_are_built_without_tf32(monkeypatch):
    """TensorRT's BuilderFlag.TF32 is on by default; Polygraphy's CreateConfig clears it unless tf32=True.
    A full-TensorRT config must ask for tf32=False (fp32 parity: 2.7e-4 with TF32 vs a 1e-4 gate). The real
    TensorRT module is absent here: a stand-in records what is asked."""
    import types

    from dinov3_deploy.engines.trt_api import TrtApi

    asked = {}
    fake_trt = types.SimpleNamespace(__name__="tensorrt", __version__="10.99",
                                     ProfilingVerbosity=types.SimpleNamespace(LAYER_NAMES_ONLY="names"),
                                     MemoryPoolType=types.SimpleNamespace(WORKSPACE="ws"))
    fake_ptrt = types.SimpleNamespace(CreateConfig=lambda **kw: asked.update(kw) or "config")
    api = TrtApi("tensorrt", fake_trt)
    monkeypatch.setattr(TrtApi, "polygraphy", lambda self: fake_ptrt)
    config, settings = api.create_config([], workspace_bytes=None, opt_level=3)
    assert config == "config" and asked["tf32"] is False and settings == {"targets": ["build-gpu"]}


def test_onnxruntime_cuda_provider_is_asked_for_fp32_not_tf32():
    from dinov3_deploy.runtime.runners import ort_providers

    assert ort_providers("cuda") == [("CUDAExecutionProvider", {"use_tf32": "0"})]
    assert ort_providers("cpu") == ["CPUExecutionProvider"]

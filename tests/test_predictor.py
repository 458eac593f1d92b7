"""The Predictor: one callable on device tensors per backend, and every backend computes the same
model. ONNX Runtime (CPU) must equal the torch backend per output within the verify thresholds; on a
GPU, CUDA-graph replay must equal eager and the engine must equal ONNX Runtime."""

import pytest
import torch
from cli_helpers import export_tiny as _export

from dinov3_deploy.artifact import load_artifact
from dinov3_deploy.errors import DeployError
from dinov3_deploy.runtime.predictor import Predictor, parse_backend
from dinov3_deploy.verification.parity import compare
from dinov3_deploy.verification.verify import Case, make_batch


@pytest.fixture(scope="module", params=["seg", "features"])
def artifact(request, tmp_path_factory):
    return load_artifact(_export(tmp_path_factory.mktemp(request.param), request.param))


def _numpy(outs: dict) -> dict:
    return {k: v.detach().float().cpu().numpy() for k, v in outs.items()}


def test_onnxruntime_cpu_equals_the_torch_backend_per_output(artifact):
    x = torch.from_numpy(make_batch(Case("p", 2, 48, 80, 3), artifact.manifest.io))
    ort = Predictor(artifact, "onnxruntime-cpu")  # named: on a GPU machine the family would pick a GPU provider
    ref = Predictor(artifact, "torch", precision="fp32", attn_impl="sdpa")  # the default is triton on CUDA
    assert ort.name == "onnxruntime-cpu" and ref.name == "torch-fp32-sdpa"
    out_ort, out_ref = ort(x.to(ort.device)), ref(x.to(ref.device))
    assert set(out_ort) == set(out_ref) == set(ref._impl.names)
    assert all(isinstance(v, torch.Tensor) and v.device == ort.device for v in out_ort.values())
    rows = compare(_numpy(out_ref), _numpy(out_ort), "p", artifact.task, artifact.precision)
    assert rows and all(r.passed for r in rows), [r.to_dict() for r in rows]
    # The comparison can fail: another image's outputs are far off.
    other = _numpy(ref(torch.from_numpy(make_batch(Case("q", 2, 48, 80, 9), artifact.manifest.io))))
    assert not all(r.passed for r in compare(_numpy(out_ref), other, "p", artifact.task, artifact.precision))
    assert ort.windows == 2 and ref.windows == 4  # images counted per call, for the summary
    ort.close()


def test_auto_and_long_names_pick_the_same_backend(artifact):
    import onnxruntime

    # auto: ONNX Runtime on the GPU where this onnxruntime has a GPU provider and a GPU is here, else on the CPU
    gpu_providers = [p for p, ep in (("tensorrt", "TensorrtExecutionProvider"), ("cuda", "CUDAExecutionProvider"))
                     if torch.cuda.is_available() and ep in onnxruntime.get_available_providers()]
    assert Predictor(artifact, "auto").name == f"onnxruntime-{(gpu_providers or ['cpu'])[0]}"
    assert Predictor(artifact, "onnxruntime-cpu").name == "onnxruntime-cpu"
    assert parse_backend("pytorch") == ("torch", "")
    with pytest.raises(DeployError, match="unknown backend 'onnx'.*--backend"):
        parse_backend("onnx")
    with pytest.raises(DeployError, match="no engine"):
        Predictor(artifact, "tensorrt")


def test_an_input_outside_the_artifact_range_is_refused(artifact):
    p = Predictor(artifact, "onnxruntime")
    with pytest.raises(DeployError):
        p(torch.from_numpy(make_batch(Case("big", 5, 48, 48, 0), artifact.manifest.io)))  # batch max is 4


@pytest.mark.gpu
def test_cuda_graph_replay_equals_eager(artifact):
    x = torch.from_numpy(make_batch(Case("g", 2, 64, 96, 1), artifact.manifest.io)).cuda()
    eager = Predictor(artifact, "torch", precision="fp32", attn_impl="sdpa", cuda_graphs=False)
    graphed = Predictor(artifact, "torch", precision="fp32", attn_impl="sdpa", cuda_graphs=True)
    ref = {k: v.clone() for k, v in eager(x).items()}
    first = {k: v.clone() for k, v in graphed(x).items()}  # captures
    y = torch.from_numpy(make_batch(Case("g", 2, 64, 96, 5), artifact.manifest.io)).cuda()
    graphed(y)  # replays with other numbers in the static input
    again = graphed(x)
    for k in ref:
        torch.testing.assert_close(first[k], ref[k], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(again[k], ref[k], atol=1e-4, rtol=1e-4)
    assert len(graphed._impl._graphs) == 1


@pytest.mark.gpu
def test_engine_equals_onnxruntime_on_full_tensorrt(tmp_path):
    pytest.importorskip("tensorrt")
    art = load_artifact(_export(tmp_path, "seg", "--format", "onnx,trt", "--trt-flavor", "tensorrt"))
    x = torch.from_numpy(make_batch(Case("e", 2, 64, 64, 0), art.manifest.io))
    eng, ort = Predictor(art, "tensorrt"), Predictor(art, "onnxruntime")
    rows = compare(_numpy(ort(x.to(ort.device))), _numpy(eng(x.cuda())), "e", art.task, art.precision)
    assert all(r.passed for r in rows), [r.to_dict() for r in rows]
    eng.close()


def test_graph_cache_keeps_the_most_recent_shapes_only():
    """One CUDA graph (and memory pool) per shape, forever, grew memory with every image size: the
    cache keeps `capacity` shapes and drops the least recently used; a kept shape is not recaptured."""
    from dinov3_deploy.runtime.device_backends import GraphCache

    captured = []
    cache = GraphCache(lambda x: captured.append(x) or f"graph{x}", capacity=2)
    assert cache.get((1,), 1) == "graph1" and cache.get((2,), 2) == "graph2"
    assert cache.get((1,), 1) == "graph1"  # replayed, and now the most recent
    cache.get((3,), 3)  # evicts (2,), the least recently used
    assert cache.keys() == [(1,), (3,)] and len(cache) == 2
    cache.get((2,), 2)  # captured again
    assert captured == [1, 2, 3, 2]


def test_whole_image_calls_are_not_graphed(artifact):
    """fixed_shape=False (a call whose shape follows the image) runs eagerly even with graphs on."""
    p = Predictor(artifact, "torch", precision="fp32", attn_impl="sdpa")
    p._impl.cuda_graphs = True  # as on a GPU; eager calls never reach the capture (which needs CUDA)
    p._impl._graphs.capture = lambda x: pytest.fail("a whole-image call was captured")
    x = torch.from_numpy(make_batch(Case("w", 1, 48, 80, 0), artifact.manifest.io))
    assert set(p(x, fixed_shape=False)) == set(p._impl.names)


def test_ortvalue_dlpack_source_takes_what_this_onnxruntime_has():
    """torch.from_dlpack needs OrtValue.__dlpack__ (recent onnxruntime); older ones expose it on the C
    binding (`_ortvalue`), or only a capsule (`to_dlpack()`)."""
    import numpy as np
    import onnxruntime

    from dinov3_deploy.runtime.device_backends import dlpack_source

    class Public:  # a recent OrtValue
        def __dlpack__(self, stream=None): ...

    class Capsule:  # an old C binding
        def to_dlpack(self):
            return "capsule"

    class Inner(Public): ...

    public = Public()
    assert dlpack_source(public) is public
    wrapped = type("Old", (), {"_ortvalue": Inner()})()
    assert dlpack_source(wrapped) is wrapped._ortvalue
    assert dlpack_source(type("Older", (), {"_ortvalue": Capsule()})()) == "capsule"
    with pytest.raises(DeployError, match="upgrade onnxruntime-gpu"):
        dlpack_source(object())
    real = onnxruntime.OrtValue.ortvalue_from_numpy(np.arange(6, dtype=np.float32))  # this machine's release
    assert torch.equal(torch.from_dlpack(dlpack_source(real)), torch.arange(6, dtype=torch.float32))

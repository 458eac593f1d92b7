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
    ort = Predictor(artifact, "onnxruntime")
    ref = Predictor(artifact, "torch", precision="fp32")
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
    assert Predictor(artifact, "auto").name == "onnxruntime-cpu"  # CPU here: what the artifact ships
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

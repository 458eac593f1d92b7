"""An ONNX Runtime session whose GPU provider failed to start must not report CPU timings or
outputs under a GPU name."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dinov3_deploy.errors import DeployError
from dinov3_deploy.runtime.runners import OrtRunner, check_provider


class FallenBackSession:
    """Stands in for a CUDA-provider session that fell back to the CPU (no GPU on this machine)."""

    def get_providers(self):
        return ["CPUExecutionProvider"]


def test_a_session_that_fell_back_to_the_cpu_is_refused():
    with pytest.raises(DeployError, match="did not start CUDAExecutionProvider.*CPUExecutionProvider"):
        check_provider(FallenBackSession(), "cuda")
    check_provider(FallenBackSession(), "cpu")  # asked for the CPU: that is what it runs


def test_the_runner_checks_its_real_session(tmp_path, monkeypatch):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    runner = OrtRunner(tmp_path / "m.onnx", "cpu")
    np.testing.assert_array_equal(runner.run(np.array([[-1, 0, 2]], np.float32))["y"], [[0, 0, 2]])
    runner.close()
    import onnxruntime

    # what a failed CUDA initialisation looks like from the session's side
    monkeypatch.setattr(onnxruntime.InferenceSession, "get_providers", lambda self: ["AzureExecutionProvider"])
    with pytest.raises(DeployError, match="did not start CPUExecutionProvider"):
        OrtRunner(tmp_path / "m.onnx", "cpu").run(np.zeros((1, 3), np.float32))

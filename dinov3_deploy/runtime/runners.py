"""Every backend behind one face: `runner.run(batch) -> {output name: numpy array}`.

    TorchRunner(DeployModule)            the PyTorch module (the fp32 reference, or any precision)
    OrtRunner(onnx, provider)            ONNX Runtime through polygraphy's SessionFromOnnx/OnnxrtRunner
    EngineRunner(engine, flavor)         a TensorRT / TensorRT-RTX engine (engines/runtime.py)

`artifact_backends(artifact)` lists the deployment backends of an artifact with, for those that
cannot run on this machine, the reason (reported as skipped, never silently dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from dinov3_deploy.errors import DeployError


class Runner(Protocol):
    name: str

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


class TorchRunner:
    def __init__(self, module, name: str = "pytorch") -> None:
        self.module = module.eval()
        self.name = name

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with torch.no_grad():
            outs = self.module(torch.from_numpy(np.ascontiguousarray(batch)))
        return {n: o.numpy() for n, o in zip(self.module.output_names, outs)}


ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
}


class OrtRunner:
    """ONNX Runtime with one execution provider (polygraphy's loader and runner underneath)."""

    def __init__(self, onnx_path: str | Path, provider: str = "cpu", name: str | None = None) -> None:
        self.onnx_path = Path(onnx_path)
        self.provider = provider
        self.name = name or f"onnxruntime-{provider}"
        self._runner = None

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._runner is None:
            from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
            from polygraphy.logger import G_LOGGER

            G_LOGGER.module_severity = G_LOGGER.WARNING
            self._runner = OnnxrtRunner(SessionFromOnnx(str(self.onnx_path), providers=[self.provider]),
                                        name=self.name)
            self._runner.activate()
            try:
                check_provider(self._runner.sess, self.provider)
            except DeployError:
                self.close()
                raise
        (name,) = list(self._runner.get_input_metadata(use_numpy_dtypes=False).keys())
        return dict(self._runner.infer({name: np.ascontiguousarray(batch)}, check_inputs=False))

    def close(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None


def check_provider(session, provider: str) -> None:
    """ONNX Runtime falls back to the CPU provider, with only a log line, when the CUDA or TensorRT
    provider is installed but fails to initialise (missing CUDA/cuDNN libraries, a driver too old):
    timings would then be CPU figures under a GPU name. Refuse instead."""
    want = ORT_PROVIDERS[provider]
    got = list(session.get_providers())
    if not got or got[0] != want:
        raise DeployError(
            f"onnxruntime-{provider}: ONNX Runtime did not start {want} (the session runs on "
            f"{', '.join(got) or 'nothing'}); check its CUDA/cuDNN/TensorRT libraries (ONNX Runtime's log says "
            "which failed to load)")


@dataclass
class Backend:
    """A deployment backend of an artifact: a runner, or the reason it cannot run here."""

    name: str
    runner: Runner | None
    skip_reason: str = ""


def _ort_skip_reason(provider: str, precision: str) -> str:
    import onnxruntime as ort

    if ORT_PROVIDERS[provider] not in ort.get_available_providers():
        extra = " (GPU: pip install 'dinov3-deploy[gpu]')" if provider != "cpu" else ""
        return f"{ORT_PROVIDERS[provider]} is not in this onnxruntime build{extra}"
    if provider == "cpu" and precision == "bf16":
        return "ONNX Runtime's CPU provider has no bfloat16 kernels (Conv/MatMul)"
    if provider != "cpu":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU on this machine"
    return ""


def artifact_backends(artifact, providers: tuple[str, ...] = ("cpu", "cuda", "tensorrt")) -> list[Backend]:
    """The ONNX Runtime providers and the engine of an artifact, each runnable or skipped with why."""
    backends = []
    manifest = artifact.manifest
    plugins = manifest.onnx.plugins
    for prov in providers:
        name = f"onnxruntime-{prov}"
        reason = _ort_skip_reason(prov, artifact.precision)
        if plugins and not reason:
            reason = f"the graph holds TensorRT plugin nodes ({', '.join(plugins)}) that only TensorRT runs"
        backends.append(Backend(name, None if reason else OrtRunner(artifact.onnx_path, prov, name), reason))
    trt = manifest.tensorrt
    if trt:
        name = f"{trt.flavor}-engine"
        try:
            from dinov3_deploy.engines.runtime import EngineRunner
            from dinov3_deploy.engines.trt_api import load_api

            ok, reason = load_api(trt.flavor).runnable_here(trt.targets)
            # TensorRT-RTX compiles kernels on first run; keep them per engine (by hash) across runs.
            entry = manifest.files.get(trt.file)
            digest = entry.sha256[:16] if entry else "engine"
            cache = Path.home() / ".cache" / "dinov3-deploy" / f"{digest}.rtx-runtime-cache"
            runner = EngineRunner(artifact.engine_path, trt.flavor, trt.version, name=name,
                                  runtime_cache=cache if trt.flavor == "tensorrt-rtx" else None) if ok else None
        except DeployError as exc:
            runner, reason = None, str(exc)
        backends.append(Backend(name, runner, reason))
    return backends

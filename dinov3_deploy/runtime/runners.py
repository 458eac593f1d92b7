"""Every backend behind one face: `runner.run(batch) -> {output name: numpy array}`.

    TorchRunner(DeployModule)            the PyTorch module (the fp32 reference, or any precision)
    OrtRunner(onnx, provider)            ONNX Runtime through polygraphy's SessionFromOnnx/OnnxrtRunner
    EngineRunner(engine, flavor)         a TensorRT / TensorRT-RTX engine (engines/runtime.py)
    OnnxReferenceRunner(onnx)            onnx.reference.ReferenceEvaluator: slow numpy, but it runs bf16
                                         graphs on the CPU (ONNX Runtime's CPU provider has no bf16 kernels)

These are the numpy faces of the backends (verification, the model bench); their names, whether
each runs here, and which a command selects are backends.py's. `artifact_backends(artifact)` lists the
deployment backends of an artifact with, for those that cannot run on this machine, the reason
(reported as skipped, never silently dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from dinov3_deploy.errors import DeployError

from .backends import (  # noqa: F401 - the one name table and resolver, re-exported for older imports
    BACKEND_FAMILIES,
    BACKEND_NAMES,
    ENGINE_BACKENDS,
    ORT_PROVIDERS,
    ort_providers,
    ort_skip_reason,
    parse_backend_names,
    skip_reason,
)


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
            self._runner = OnnxrtRunner(SessionFromOnnx(str(self.onnx_path), providers=ort_providers(self.provider)),
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


class OnnxReferenceRunner:
    """The ONNX reference evaluator: every op in numpy, bfloat16 through `ml_dtypes`, so a bf16 graph
    runs before a user's GPU does. Orders of magnitude slower than ONNX Runtime: `verify` gives it
    small shapes only (SMALL_PIXELS). Outputs come back as float32 (bf16 ones widened exactly)."""

    def __init__(self, onnx_model, name: str = "onnx-reference") -> None:
        self.onnx_model = onnx_model  # a path, or an in-memory ModelProto (per-block debug graphs)
        self.name = name
        self._evaluator = None
        self._input = ""
        self._outputs: list[str] = []

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._evaluator is None:
            import onnx
            from onnx.reference import ReferenceEvaluator

            try:
                import ml_dtypes  # noqa: F401 - the evaluator needs it for bfloat16 tensors
            except ImportError as exc:
                raise DeployError("onnx-reference needs ml_dtypes for bfloat16: pip install ml_dtypes") from exc
            model = self.onnx_model
            if not isinstance(model, onnx.ModelProto):
                model = onnx.load(str(model))  # external data beside the file is found
            self._input = model.graph.input[0].name
            self._outputs = [o.name for o in model.graph.output]
            from dinov3_deploy.engines.plugin_reference import plugin_ops
            from dinov3_deploy.runtime.reference_ops import REFERENCE_OPS

            # GridSample vectorised (onnx's own refuses opset 18's "bilinear"); plugin nodes
            # (dinov3_deploy.ms_deform_attn) computed by the plain PyTorch core they replace
            self._evaluator = ReferenceEvaluator(model, new_ops=[*REFERENCE_OPS, *plugin_ops()])
        outs = self._evaluator.run(None, {self._input: np.ascontiguousarray(batch)})
        return {n: _widen(o) for n, o in zip(self._outputs, outs)}

    def close(self) -> None:
        self._evaluator = None


def _widen(a) -> np.ndarray:
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype.kind == "V" or a.dtype.name == "bfloat16" else a


#: Largest batch*height*width the reference evaluator is given (2x128x128: a few seconds on tiny models).
SMALL_PIXELS = 2 * 128 * 128


@dataclass
class Backend:
    """A deployment backend of an artifact: a runner, or the reason it cannot run here.
    `max_pixels`: the largest batch*height*width it is sized for (None: any); verify runs it at
    the artifact's smallest allowed shape when its cases are larger, and says so."""

    name: str
    runner: Runner | None
    skip_reason: str = ""
    max_pixels: int | None = None


# The reference evaluator is numpy: fp16 / bf16 matmuls without BLAS, so its time grows with the
# weights (the measured vits16 figure is in docs/precision.md). For fp16, where ONNX
# Runtime gives a parity figure anyway, verify's automatic backends take it up to this size (vits16plus,
# ConvNeXt-S); for bf16 it is the only CPU backend and runs whatever the size. Named, it always runs.
AUTO_REFERENCE_BYTES = 128 * 2**20


def onnx_bytes(artifact) -> int:
    """Bytes of the artifact's ONNX graph and its external weights on disk."""
    paths = (artifact.onnx_path, artifact.onnx_path.with_name(artifact.onnx_path.name + ".data"))
    return sum(p.stat().st_size for p in paths if p.is_file())


def reference_backend(artifact, max_bytes: int | None = None) -> Backend:
    """onnx-reference: runs any precision as written (fp16 overflow, bf16) on the CPU, at small shapes;
    skipped (saying how to run it anyway) when the graph's weights exceed `max_bytes`."""
    from dinov3_deploy.engines.plugin_reference import unsupported_plugins

    reason = ""
    size = onnx_bytes(artifact)
    if max_bytes is not None and size > max_bytes:
        reason = (f"{size / 2**20:.0f} MiB of weights is slow for the numpy evaluator (the automatic limit is "
                  f"{max_bytes / 2**20:.0f} MiB); verify --backend onnx-reference runs it anyway")
    elif unsupported_plugins(artifact.manifest.onnx.plugins):
        reason = (f"the graph holds TensorRT plugin nodes the evaluator has no implementation of "
                  f"({', '.join(unsupported_plugins(artifact.manifest.onnx.plugins))})")
    else:
        try:
            import ml_dtypes  # noqa: F401
        except ImportError:
            reason = "ml_dtypes is not installed (pip install ml_dtypes)"
    runner = None if reason else OnnxReferenceRunner(artifact.onnx_path)
    return Backend("onnx-reference", runner, reason, max_pixels=SMALL_PIXELS)


def artifact_backends(artifact, providers: tuple[str, ...] = ("cpu", "cuda", "tensorrt"),
                      reference: str = "never") -> list[Backend]:
    """The ONNX Runtime providers, the engine of an artifact and (`reference`: "low-precision" for
    fp16 and bf16 artifacts and plugin graphs, as verify asks; "always"; "never", for callers that time or serve: it
    is numpy) the ONNX reference evaluator, each runnable or skipped with why. On a CPU it is the
    one backend that computes a low-precision graph as written: ONNX Runtime's CPU provider has no
    bf16 kernels and runs most fp16 nodes through fp32 casts, so an fp16 graph that overflows to
    inf on a GPU stays finite there (tests/test_onnx_reference.py shows one)."""
    backends = []
    manifest = artifact.manifest
    for prov in providers:
        name = f"onnxruntime-{prov}"
        reason = ort_skip_reason(artifact, prov)
        backends.append(Backend(name, None if reason else OrtRunner(artifact.onnx_path, prov, name), reason))
    if manifest.tensorrt:
        try:
            runner, reason = engine_runner(artifact), ""
        except DeployError as exc:
            runner, reason = None, str(exc)
        backends.append(Backend(f"{manifest.tensorrt.flavor}-engine", runner, reason))
    if reference == "always" or (reference == "low-precision" and manifest.onnx.plugins):
        # plugin graphs: ONNX Runtime cannot run them, the evaluator (engines/plugin_reference.py) can
        backends.append(reference_backend(artifact))
    elif reference == "low-precision" and artifact.precision == "bf16":
        backends.append(reference_backend(artifact))
    elif reference == "low-precision" and artifact.precision == "fp8":
        backends.append(reference_backend(artifact))  # fp8 Q/DQ computed as written, beside ONNX Runtime's run
    elif reference == "low-precision" and artifact.precision == "fp16":
        backends.append(reference_backend(artifact, max_bytes=AUTO_REFERENCE_BYTES))
    return backends


def engine_runner(artifact):
    """The artifact's engine as an EngineRunner (both faces: `run` on numpy, `infer` on device tensors);
    a DeployError saying why when it cannot run here."""
    from dinov3_deploy.engines.runtime import EngineRunner

    from .backends import engine_skip_reason

    reason = engine_skip_reason(artifact)
    if reason:
        raise DeployError(reason)
    trt = artifact.manifest.tensorrt
    # TensorRT-RTX compiles kernels on first run; keep them per engine (by hash) across runs.
    entry = artifact.manifest.files.get(trt.file)
    digest = entry.sha256[:16] if entry else "engine"
    cache = Path.home() / ".cache" / "dinov3-deploy" / f"{digest}.rtx-runtime-cache"
    return EngineRunner(artifact.engine_path, trt.flavor, trt.version, name=f"{trt.flavor}-engine",
                        runtime_cache=cache if trt.flavor == "tensorrt-rtx" else None)


def ort_session(onnx_path: str | Path, provider: str):
    """A plain ONNX Runtime session on one provider, checked to run there (the Predictor's device face
    binds device buffers through it; the numpy face goes through polygraphy)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), opts, providers=ort_providers(provider))
    check_provider(session, provider)
    return session


def select_backends(artifact, spec: str | None, option: str = "--backend") -> list:
    """verify's selection (numpy faces, runners.Backend): every runnable one for `auto` (skipped ones
    reported), else those named: a named backend that cannot run here is reported skipped with why."""
    names = parse_backend_names(spec, option)
    if names is None:
        return artifact_backends(artifact, reference="low-precision")
    available = {b.name: b for b in artifact_backends(artifact, reference="always")}
    chosen = []
    for name in names:
        if name == "pytorch":
            chosen.append(Backend(name, None))  # verify gives it the model it builds for the reference
        elif name in available:
            chosen.append(available[name])
        elif name in ENGINE_BACKENDS:
            chosen.append(Backend(name, None, skip_reason(artifact, name)))
    return chosen

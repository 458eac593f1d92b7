"""`Predictor(artifact, backend)`: the deployed model as a callable on torch tensors that live on the
backend's device. The runners in runners.py take and return numpy arrays, which is right for
verification (one host-side comparison per output) but wrong for inference on a GPU: every sliding
window would cross PCIe twice and be stitched on the host. Here tensors stay where the backend
computes, and numpy appears only at the CLI edge.

    predict = Predictor(artifact, "onnxruntime")        # or "torch", "tensorrt", "auto", "onnxruntime-cuda"
    outs = predict(x)       # x: the artifact's input (uint8 NHWC or normalised fp32 NCHW) on predict.device
    predict.close()

Outputs are valid until the next call: the CUDA-graph and engine backends return their static
output buffers, which the next call overwrites (copy or consume them first).

Backends:
  torch        the artifact's model rebuilt from its manifest (DeployModule.from_io) at the artifact's
               precision or fp32, attention "sdpa" or "triton", optional torch.compile, and on a GPU one
               CUDA graph per input shape, replayed.
  onnxruntime  the best provider that runs here (TensorRT, CUDA, CPU), or the one named; on a GPU
               provider, IOBinding on torch device buffers, so ONNX Runtime reads and writes device memory.
  tensorrt     the artifact's engine through engines/runtime.py EngineRunner.infer (buffers bound once
               per shape, ordered on the caller's stream; a CUDA graph per input shape where TensorRT
               can be captured, plain enqueue where not; `cuda_graphs=False` turns graphs off).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dinov3_deploy.errors import DeployError

SHORT_BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


def _long_backends() -> dict[str, tuple[str, str]]:
    """The long names `verify` reports (runners.BACKEND_NAMES, one table) -> (backend, detail); the
    onnx-reference evaluator is a verification backend, too slow to predict with."""
    from .runners import BACKEND_NAMES as VERIFY_NAMES
    from .runners import ENGINE_BACKENDS

    out = {"pytorch": ("torch", "")}
    for name in VERIFY_NAMES:
        if name.startswith("onnxruntime-"):
            out[name] = ("onnxruntime", name.removeprefix("onnxruntime-"))
        elif name in ENGINE_BACKENDS:
            out[name] = ("tensorrt", "")
    return out


def parse_backend(name: str, option: str = "--backend") -> tuple[str, str]:
    """'onnxruntime-cuda' -> ('onnxruntime', 'cuda'); 'torch' -> ('torch', ''); else a one-line error."""
    if name in SHORT_BACKENDS:
        return name, ""
    long = _long_backends()
    if name in long:
        return long[name]
    raise DeployError(f"unknown backend '{name}': {option} takes one of {', '.join((*SHORT_BACKENDS, *long))}")


def check_attn(attn_impl: str | None, device: torch.device | str) -> None:
    """The Triton attention kernel runs on a CUDA GPU, or on the CPU only under the interpreter."""
    from dinov3_deploy.kernels.attention import interpreting

    device = torch.device(device)
    if attn_impl == "triton" and device.type != "cuda" and not interpreting():
        raise DeployError(f"--attn triton: the torch backend runs on '{device}' and the Triton attention kernel "
                          "needs a CUDA GPU (or TRITON_INTERPRET=1 for the slow CPU interpreter); use --attn sdpa")


def _gpu() -> bool:
    return torch.cuda.is_available()


class Predictor:
    """The artifact's model on one backend: `predictor(x) -> {output name: tensor}` on `predictor.device`."""

    def __init__(self, artifact, backend: str = "auto", *, precision: str | None = None, attn_impl: str | None = None,
                 compile_mode: str | None = None, cuda_graphs: bool = True, device: str | None = None) -> None:
        self.artifact = artifact
        self.io = artifact.manifest.io
        kind, detail = parse_backend(backend)
        if kind == "auto":
            kind, detail = self._auto()
        self.kind = kind
        self.windows = 0  # inputs run (sliding windows, or whole images), for the summary
        self._shapes = artifact.shapes()
        self._norm: tuple[torch.Tensor, torch.Tensor] | None = None
        if kind != "torch" and (attn_impl or compile_mode):
            given = " and ".join(f for f, v in (("--attn", attn_impl), ("--compile", compile_mode)) if v)
            raise DeployError(f"{given} apply to the torch backend only; this run uses {kind}"
                              f"{'-' + detail if detail else ''} (add --backend torch, or drop {given})")
        if kind == "torch":
            self.device = torch.device(device or ("cuda" if _gpu() else "cpu"))
            self._impl = _TorchBackend(artifact, self.device, precision or artifact.precision,
                                       attn_impl or ("triton" if self.device.type == "cuda" else "sdpa"),
                                       compile_mode, cuda_graphs and self.device.type == "cuda")
            self.name = f"torch-{self._impl.precision}-{self._impl.attn_impl}"
        elif kind == "onnxruntime":
            self._impl = _OrtBackend(artifact, detail or self._best_ort())
            self.device, self.name = self._impl.device, self._impl.name
        else:
            self._impl = _engine_backend(artifact, cuda_graphs)
            self.device, self.name = torch.device("cuda"), self._impl.name

    # -- choosing ----------------------------------------------------------------------------------
    def _reasons(self) -> dict[str, str]:
        from dinov3_deploy.runtime.runners import artifact_backends

        return {b.name: b.skip_reason for b in artifact_backends(self.artifact)}

    def _auto(self) -> tuple[str, str]:
        """On a GPU: the engine, else ONNX Runtime on the GPU, else torch. On the CPU: ONNX Runtime
        (what the artifact ships), else torch."""
        reasons = self._reasons()
        engine = [n for n in reasons if n.endswith("-engine") and not reasons[n]]
        if engine:
            return "tensorrt", ""
        for prov in (("tensorrt", "cuda") if _gpu() else ()) + ("cpu",):
            if reasons.get(f"onnxruntime-{prov}") == "":
                return "onnxruntime", prov
        return "torch", ""

    def _best_ort(self) -> str:
        reasons = self._reasons()
        for prov in ("tensorrt", "cuda", "cpu"):
            if reasons.get(f"onnxruntime-{prov}") == "":
                return prov
        raise DeployError("--backend onnxruntime: no ONNX Runtime provider runs this artifact here: " + "; ".join(
            f"{n}: {r}" for n, r in reasons.items() if n.startswith("onnxruntime")))

    # -- running -----------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, h, w = (x.shape[0], *x.shape[1:3]) if self.io.uint8_input else (x.shape[0], *x.shape[-2:])
        self._shapes.check(int(b), int(h), int(w))
        self.windows += int(b)
        return self._impl(x)

    def to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float [b,3,h,w] holding 0..255 RGB values (on any device) -> the artifact's input on self.device."""
        x = pixels.to(self.device, non_blocking=True).round().clamp(0, 255)
        if self.io.uint8_input:
            return x.permute(0, 2, 3, 1).to(torch.uint8).contiguous()
        if self._norm is None:  # made once: a host-to-device copy per window batch is not free
            self._norm = tuple(torch.tensor(v, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
                               for v in (self.io.mean, self.io.std))
        mean, std = self._norm
        return ((x.float() / 255.0 - mean) / std).contiguous()

    def close(self) -> None:
        close = getattr(self._impl, "close", None)
        if close:
            close()


class _TorchBackend:
    def __init__(self, artifact, device: torch.device, precision: str, attn_impl: str, compile_mode: str | None,
                 cuda_graphs: bool) -> None:
        from dinov3_deploy.deploy_module import PRECISIONS, DeployModule
        from dinov3_deploy.model_source import source_from_manifest
        from dinov3_deploy.reference.models.layers.attention import ATTN_IMPLS

        if precision not in PRECISIONS:
            raise DeployError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
        if attn_impl not in ATTN_IMPLS:
            raise DeployError(f"--attn must be one of {', '.join(ATTN_IMPLS)}, got '{attn_impl}'")
        check_attn(attn_impl, device)
        self.precision, self.attn_impl = precision, attn_impl
        model = source_from_manifest(artifact.manifest.source).build(attn_impl=attn_impl)
        self.module = DeployModule.for_artifact(model, precision, artifact.manifest).to(device).eval()
        self.names = list(self.module.output_names)
        self.fn: Callable = torch.compile(self.module, mode=compile_mode) if compile_mode else self.module
        # These modes replay CUDA graphs of their own (Inductor's cudagraph trees); capturing them again
        # inside ours would nest two graph managers over the same memory.
        self.cuda_graphs = cuda_graphs and compile_mode not in ("reduce-overhead", "max-autotune")
        self._graphs: dict[tuple, tuple] = {}  # input shape -> (graph, static input, static outputs)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.cuda_graphs:
            return dict(zip(self.names, self.fn(x)))
        key = (tuple(x.shape), x.dtype)
        if key not in self._graphs:
            self._graphs[key] = self._capture(x)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return dict(zip(self.names, static_out))

    def _capture(self, x: torch.Tensor) -> tuple:
        """One CUDA graph for this input shape: warm up on a side stream (lazy initialisation, Triton's
        autotuning and compilation must not be captured), then capture one forward."""
        static_in = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.fn(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the decode threads allocate pinned memory (cudaHostAlloc) meanwhile, which the
        # default "global" mode would turn into an error in those threads.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_out = self.fn(static_in)
        return graph, static_in, tuple(static_out)


_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16,
              "tensor(int32)": torch.int32, "tensor(int64)": torch.int64, "tensor(uint8)": torch.uint8}


class _OrtBackend:
    def __init__(self, artifact, provider: str) -> None:
        import onnxruntime as ort

        from dinov3_deploy.runtime.runners import ORT_PROVIDERS, check_provider, ort_providers

        if provider not in ORT_PROVIDERS:
            raise DeployError(f"--backend onnxruntime-{provider}: providers are {', '.join(ORT_PROVIDERS)}")
        reason = next((b.skip_reason for b in _backends(artifact) if b.name == f"onnxruntime-{provider}"), "")
        if reason:
            raise DeployError(f"--backend onnxruntime-{provider} cannot run here: {reason}")
        self.name = f"onnxruntime-{provider}"
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(artifact.onnx_path), opts, providers=ort_providers(provider))
        check_provider(self.session, provider)
        self.device = torch.device("cpu" if provider == "cpu" else "cuda")
        (self.input,) = self.session.get_inputs()
        self.outputs = self.session.get_outputs()

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.contiguous()
        if self.device.type == "cpu":  # a CPU tensor's numpy view shares its memory: no copy either way
            outs = self.session.run(None, {self.input.name: x.numpy()})
            return {o.name: torch.from_numpy(np.asarray(v)) for o, v in zip(self.outputs, outs)}
        # GPU provider: ONNX Runtime reads the caller's device buffer and writes ones it allocates on the
        # device; DLPack hands those to torch without a copy.
        binding = self.session.io_binding()
        binding.bind_input(self.input.name, "cuda", x.device.index or 0, _numpy_dtype(x.dtype), list(x.shape),
                           x.data_ptr())
        for o in self.outputs:
            binding.bind_output(o.name, "cuda", x.device.index or 0)
        torch.cuda.current_stream().synchronize()  # x was written on torch's stream; ORT runs on its own
        self.session.run_with_iobinding(binding)
        return {o.name: torch.from_dlpack(v) for o, v in zip(self.outputs, binding.get_outputs())}


def _numpy_dtype(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.float16: np.float16, torch.uint8: np.uint8,
            torch.int32: np.int32, torch.int64: np.int64}[dtype]


def _backends(artifact):
    from dinov3_deploy.runtime.runners import artifact_backends

    return artifact_backends(artifact)


class _EngineBackend:
    def __init__(self, runner) -> None:
        self.runner, self.name = runner, runner.name

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.runner.infer(x)

    def close(self) -> None:
        self.runner.close()


def _engine_backend(artifact, cuda_graphs: bool) -> _EngineBackend:
    engines = [b for b in _backends(artifact) if b.name.endswith("-engine")]
    if not engines:
        raise DeployError("--backend tensorrt: this artifact has no engine (export it with --format onnx,trt)")
    if engines[0].runner is None:
        raise DeployError(f"--backend tensorrt cannot run here: {engines[0].skip_reason}")
    engines[0].runner.cuda_graphs = cuda_graphs
    return _EngineBackend(engines[0].runner)

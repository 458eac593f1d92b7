"""The device-tensor face of each backend: `face(x) -> {output name: torch.Tensor}` on the backend's
device, for the Predictor. The numpy face of the same backends is runners.py (verification); which
backend runs is decided in backends.py, never here.

  TorchFace   the artifact's model rebuilt from its manifest, optional torch.compile, and on a GPU CUDA
              graphs for the fixed-shape calls (sliding windows), at most GraphCache.capacity shapes kept;
              a Mask2Former model runs the Triton deformable-attention kernel on a GPU (deform_impl_for).
  OrtFace     ONNX Runtime on one provider; on a GPU provider, IOBinding on torch device buffers.
  EngineFace  the artifact's engine through engines/runtime.py EngineRunner.infer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np
import torch

from dinov3_deploy.errors import DeployError


def check_attn(attn_impl: str | None, device: torch.device | str) -> None:
    """The Triton attention kernel runs on a CUDA GPU, or on the CPU only under the interpreter."""
    from dinov3_deploy.kernels.attention import interpreting

    device = torch.device(device)
    if attn_impl == "triton" and device.type != "cuda" and not interpreting():
        raise DeployError(f"--attn triton: the torch backend runs on '{device}' and the Triton attention kernel "
                          "needs a CUDA GPU (or TRITON_INTERPRET=1 for the slow CPU interpreter); use --attn sdpa")


class GraphCache:
    """At most `capacity` captured graphs, keyed by input shape; the least recently used is dropped
    first (as EngineRunner keeps its shapes). Each CUDA graph holds a memory pool of its own, so an
    uncapped cache grew reserved memory with every new shape (~58 MiB per shape measured on an H200)."""

    def __init__(self, capture: Callable, capacity: int = 4) -> None:
        self.capture, self.capacity = capture, capacity
        self._entries: OrderedDict = OrderedDict()

    def get(self, key: Hashable, x):
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = self.capture(x)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list:
        return list(self._entries)


def deform_impl_for(device: torch.device) -> str:
    """The Mask2Former deformable-attention core the torch backend runs on `device`: the Triton kernel
    (kernels/ms_deform_attn.py) on a CUDA GPU, the plain PyTorch core elsewhere (on the CPU the kernel
    would only run under the slow interpreter)."""
    return "triton" if torch.device(device).type == "cuda" else "plain"


def torch_model(source, device: torch.device, attn_impl: str):
    """(fp32 model of `source`, its deformable-attention core or None) for the torch backend on `device`;
    not moved there yet. A Mask2Former model runs deform_impl_for(device)."""
    from dinov3_deploy.export.m2f_model import is_m2f_model

    model = source.build(attn_impl=attn_impl)
    if not is_m2f_model(model):
        return model, None
    deform = deform_impl_for(device)
    model.segmentor.set_deform_impl(deform)
    return model, deform


def torch_backend_name(precision: str, attn_impl: str, deform_impl: str | None) -> str:
    """torch-<precision>-<attention>[-deform-<core>]: what the torch backend computes with."""
    return f"torch-{precision}-{attn_impl}" + (f"-deform-{deform_impl}" if deform_impl else "")


class TorchFace:
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
        self.device, self.precision, self.attn_impl = device, precision, attn_impl
        model, self.deform_impl = torch_model(source_from_manifest(artifact.manifest.source), device, attn_impl)
        self.name = torch_backend_name(precision, attn_impl, self.deform_impl)
        self.module = DeployModule.for_artifact(model, precision, artifact.manifest).to(device).eval()
        self.names = list(self.module.output_names)
        self.fn: Callable = torch.compile(self.module, mode=compile_mode) if compile_mode else self.module
        # These modes replay CUDA graphs of their own (Inductor's cudagraph trees); capturing them again
        # inside ours would nest two graph managers over the same memory.
        self.cuda_graphs = cuda_graphs and compile_mode not in ("reduce-overhead", "max-autotune")
        self._graphs = GraphCache(self._capture)  # input shape -> (graph, static input, static outputs)

    @torch.no_grad()
    def eager(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """A call whose shape follows the image (whole-image tasks): a graph per image size would be
        captured once and rarely replayed, so it runs without one."""
        return dict(zip(self.names, self.fn(x)))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.cuda_graphs:
            return self.eager(x)
        graph, static_in, static_out = self._graphs.get((tuple(x.shape), x.dtype), x)
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


def dlpack_source(value):
    """What `torch.from_dlpack` can take for an onnxruntime OrtValue. The public OrtValue wrapper has
    `__dlpack__` only in recent releases (microsoft/onnxruntime PR #27980, merged April 2026); the C
    binding underneath (`value._ortvalue`) has had `__dlpack__` longer (PR #23110) and `to_dlpack()`, a
    capsule, before that. The `gpu` extra allows older releases, so take the first that exists."""
    if hasattr(value, "__dlpack__"):
        return value
    inner = getattr(value, "_ortvalue", value)
    if hasattr(inner, "__dlpack__"):
        return inner
    if hasattr(inner, "to_dlpack"):
        return inner.to_dlpack()
    raise DeployError("this onnxruntime cannot hand device outputs to torch (no DLPack on OrtValue); "
                      "upgrade onnxruntime-gpu")


class OrtFace:
    def __init__(self, artifact, provider: str) -> None:
        from .runners import ort_session

        self.name = f"onnxruntime-{provider}"
        self.session = ort_session(artifact.onnx_path, provider)
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
        return {o.name: torch.from_dlpack(dlpack_source(v)) for o, v in zip(self.outputs, binding.get_outputs())}


def _numpy_dtype(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.float16: np.float16, torch.uint8: np.uint8,
            torch.int32: np.int32, torch.int64: np.int64}[dtype]


class EngineFace:
    def __init__(self, artifact, cuda_graphs: bool) -> None:
        from .runners import engine_runner

        self.runner = engine_runner(artifact)
        self.runner.cuda_graphs = cuda_graphs
        self.name, self.device = self.runner.name, torch.device("cuda")

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.runner.infer(x)  # the runner keeps its own least-recently-used shapes

    def close(self) -> None:
        self.runner.close()

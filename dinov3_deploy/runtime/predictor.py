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

Which backend runs is decided by backends.py (`--backend auto` here: the best one that runs); the
device-tensor face of each is device_backends.py. Backends:
  torch        the artifact's model rebuilt from its manifest (DeployModule.from_io) at the artifact's
               precision or fp32, attention "sdpa" or "triton", optional torch.compile, and on a GPU a
               CUDA graph per window shape (at most four kept), replayed; whole-image calls run eagerly.
               A Mask2Former model's deformable attention: the Triton kernel on a GPU, the plain core on
               the CPU (the name ends -deform-triton / -deform-plain).
  onnxruntime  the best provider that runs here (TensorRT, CUDA, CPU), or the one named; on a GPU
               provider, IOBinding on torch device buffers, so ONNX Runtime reads and writes device memory.
  tensorrt     the artifact's engine through engines/runtime.py EngineRunner.infer (buffers bound once
               per shape, ordered on the caller's stream; a CUDA graph per input shape where TensorRT
               can be captured, plain enqueue where not; `cuda_graphs=False` turns graphs off).
"""

from __future__ import annotations

import torch

from dinov3_deploy.errors import DeployError

from .backends import SHORT_BACKENDS, parse_backend, resolve_for_predictor  # noqa: F401 - re-exported
from .device_backends import EngineFace, OrtFace, TorchFace, check_attn  # noqa: F401 - check_attn re-exported


def _gpu() -> bool:
    return torch.cuda.is_available()


def predictor_device(device: str | None) -> torch.device:
    """The torch backend's device: the one asked for, else the GPU when there is one, else the CPU."""
    return torch.device(device or ("cuda" if _gpu() else "cpu"))


class Predictor:
    """The artifact's model on one backend: `predictor(x) -> {output name: tensor}` on `predictor.device`."""

    def __init__(self, artifact, backend: str = "auto", *, precision: str | None = None, attn_impl: str | None = None,
                 compile_mode: str | None = None, cuda_graphs: bool = True, device: str | None = None) -> None:
        self.artifact = artifact
        self.io = artifact.manifest.io
        kind, detail = resolve_for_predictor(artifact, backend, _gpu())
        self.kind = kind
        self.windows = 0  # inputs run (sliding windows, or whole images), for the summary
        self._shapes = artifact.shapes()
        self._norm: tuple[torch.Tensor, torch.Tensor] | None = None
        if kind != "torch" and (attn_impl or compile_mode):
            given = " and ".join(f for f, v in (("--attn", attn_impl), ("--compile", compile_mode)) if v)
            raise DeployError(f"{given} apply to the torch backend only; this run uses {kind}"
                              f"{'-' + detail if detail else ''} (add --backend torch, or drop {given})")
        if kind == "torch":
            device = predictor_device(device)
            self._impl = TorchFace(artifact, device, precision or artifact.precision,
                                   attn_impl or ("triton" if device.type == "cuda" else "sdpa"),
                                   compile_mode, cuda_graphs and device.type == "cuda")
        elif kind == "onnxruntime":
            self._impl = OrtFace(artifact, detail)
        else:
            self._impl = EngineFace(artifact, cuda_graphs)
        self.device, self.name = self._impl.device, self._impl.name

    def __call__(self, x: torch.Tensor, fixed_shape: bool = True) -> dict[str, torch.Tensor]:
        """fixed_shape=False: the input's shape follows the image (whole-image tasks), so it is not graphed."""
        b, h, w = (x.shape[0], *x.shape[1:3]) if self.io.uint8_input else (x.shape[0], *x.shape[-2:])
        self._shapes.check(int(b), int(h), int(w))
        self.windows += int(b)
        if not fixed_shape and hasattr(self._impl, "eager"):
            return self._impl.eager(x)
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

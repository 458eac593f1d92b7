"""Running a serialised engine (needs a CUDA GPU): deserialise, one execution context (with the
TensorRT-RTX runtime cache when that flavour), dynamic input shapes, torch CUDA buffers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dinov3_deploy.errors import ArtifactError

from .trt_api import TrtApi, load_api

_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                 "UINT8": "uint8", "BOOL": "bool", "INT8": "int8"}


class EngineRunner:
    """`run(batch) -> {output: array}` over a serialised engine."""

    def __init__(self, engine_path: str | Path, flavor: str, built_version: str | None = None,
                 runtime_cache: Path | None = None, name: str | None = None) -> None:
        self.engine_path = Path(engine_path)
        self.api: TrtApi = load_api(flavor)
        if built_version is not None and built_version != self.api.version:
            raise ArtifactError(
                f"{self.engine_path} was built with {flavor} {built_version}, this machine has {self.api.version}: "
                "engines are tied to the TensorRT version; rebuild it (dinov3-deploy export --format trt)"
            )
        self.name = name or f"{flavor} engine"
        self.runtime_cache = runtime_cache
        self._ctx = None

    def _activate(self) -> None:
        import torch

        trt = self.api.trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"{self.api.flavor} {self.api.version} could not deserialise {self.engine_path}")
        self._ctx, self._save_cache = self.api.create_context(self._engine, self.runtime_cache)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._stream = torch.cuda.Stream()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        if self._ctx is None:
            self._activate()
        (inp,) = self._inputs
        x = torch.from_numpy(np.ascontiguousarray(batch)).cuda()
        self._ctx.set_input_shape(inp, tuple(x.shape))
        self._ctx.set_tensor_address(inp, x.data_ptr())
        outs = {}
        for name in self._outputs:
            shape = tuple(self._ctx.get_tensor_shape(name))
            dtype = _TORCH_DTYPES[str(self._engine.get_tensor_dtype(name)).split(".")[-1]]
            outs[name] = torch.empty(shape, dtype=getattr(torch, dtype), device="cuda")
            self._ctx.set_tensor_address(name, outs[name].data_ptr())
        with torch.cuda.stream(self._stream):
            if not self._ctx.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"{self.name}: execute_async_v3 failed")
        self._stream.synchronize()
        self._save_cache()
        return {k: v.float().cpu().numpy() if v.dtype in (torch.float16, torch.bfloat16) else v.cpu().numpy()
                for k, v in outs.items()}

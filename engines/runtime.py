"""Running a serialised engine (needs a CUDA GPU): deserialise, one execution context (with the
TensorRT-RTX runtime cache when that flavour), dynamic input shapes, torch CUDA buffers.

What a runner must get right, and why this is ours rather than Polygraphy's `TrtRunner`:
* Stream order. The engine runs on a stream of its own (TensorRT synchronises the whole device
  around work enqueued on the legacy default stream), which first waits for the torch stream that
  wrote the input; then the torch stream waits for the engine, so whatever reads the outputs on it,
  and the caching allocator's reuse of freed blocks, come after. `TrtRunner` runs on a stream from
  Polygraphy's own CUDA wrapper and cannot be ordered after a torch stream.
* A clear error for an input outside the engine's optimisation profile, with the profile's range
  (`TrtRunner` reports only that the shape was refused).
* The TensorRT-RTX runtime cache: loaded at activation, saved once, atomically, on `close()`.
  Kernels keep being compiled for new shapes during a session, so the cache is most complete then.
* Buffers allocated once per input shape, not per call (kept for the last few shapes, since the
  sliding window alternates between a full and a last, partial batch of windows).
* CUDA graphs. The first call of a shape enqueues normally (TensorRT must run `execute_async_v3` once
  after a shape change before it can be captured: it finishes deferred set-up then), and then captures
  one more enqueue on the engine's stream (a capture cannot run on the legacy default stream, which
  torch uses unless told otherwise). Later calls of that shape copy the input into the bound buffer
  and replay the graph on the caller's stream, so no side-stream waits either. A graph bakes in the
  context's state at capture (shape, addresses, what enqueue staged for that shape), and TensorRT
  documents no way to return a context to that state after it ran another shape. So each captured
  shape gets an execution context of its own (created at its first call, kept and dropped with its
  buffers and graph, `max_shapes` at most): a graph is only ever replayed on the context that never
  left its shape. The price is one activation memory per kept shape. Where capture fails
  (data-dependent shapes, a TensorRT-RTX context that says it is not capturable, an operation that
  capture forbids) the reason is logged once per shape and that shape keeps the plain enqueue.
  TensorRT-RTX captures its own graphs (one context, its runtime config's WHOLE_GRAPH_CAPTURE).
  `cuda_graphs = False` turns graphs off.
Deserialisation is ours too: Polygraphy's `EngineFromBytes`/`EngineFromPath` set
`engine_host_code_allowed`, which would let an engine file carry host code that runs here.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from dinov3_deploy.errors import ArtifactError, InputShapeError

from .trt_api import RuntimeCache, TrtApi, load_api

log = logging.getLogger("dinov3_deploy.engines")

_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                 "UINT8": "uint8", "BOOL": "bool", "INT8": "int8"}


class EngineRunner:
    """`run(batch) -> {output: array}` over a serialised engine; `close()` when done."""

    device = "cuda"  # where the I/O buffers live (the CPU tests set "cpu" around a stand-in engine)
    cuda_graphs = True  # capture and replay a CUDA graph per input shape (Predictor(cuda_graphs=False) clears it)
    max_shapes = 4  # input shapes whose buffers (and graphs) are kept; the least recently used goes first

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
        self._cache: RuntimeCache | None = None
        self._ran = False  # an inference ran since activation: the runtime cache may hold new kernels
        self._shape: tuple[int, ...] | None = None  # the input shape the context is set up for
        self._buffers: OrderedDict = OrderedDict()  # input shape -> {tensor name: torch CUDA tensor}
        self._graphs: dict = {}  # input shape -> torch.cuda.CUDAGraph of one enqueue at that shape
        self._contexts: dict = {}  # input shape -> its own execution context (full TensorRT with graphs)
        self._fresh = True  # the context changed shape since its last enqueue: no replay before one
        self.graph_skipped: dict = {}  # input shape -> why no graph was captured (logged once)

    def _activate(self) -> None:
        import torch

        trt = self.api.trt
        torch.cuda.init()  # a current CUDA context: the runtime cache is checked against it when loaded
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"{self.api.flavor} {self.api.version} could not deserialise {self.engine_path}")
        # TensorRT-RTX captures graphs itself (trt_api.create_context); the runner captures for full TensorRT
        self._ctx, self._cache = self.api.create_context(self._engine, self.runtime_cache,
                                                         cuda_graphs=self.cuda_graphs and self.api.is_rtx)
        self._own_graphs = self.cuda_graphs and not self.api.is_rtx
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._stream = torch.cuda.Stream()

    def _torch_dtype(self, name: str):
        import torch

        return getattr(torch, _TORCH_DTYPES[str(self._engine.get_tensor_dtype(name)).split(".")[-1]])

    def _bind(self, shape: tuple[int, ...]) -> dict:
        """Set the context to this input shape and bind its buffers (allocated the first time the shape is
        seen, kept for the last `max_shapes` shapes); nothing to do when the context is already there."""
        import torch

        if shape == self._shape:
            return self._buffers[shape]
        (inp,) = self._inputs
        if self._own_graphs:
            self._use_context_of(shape)
            if shape in self._buffers:  # this context has stayed at `shape`, its buffers bound, since it last ran
                self._buffers.move_to_end(shape)
                self._shape, self._fresh = shape, False
                return self._buffers[shape]
        if not self._ctx.set_input_shape(inp, shape):
            lo, _, hi = self._engine.get_tensor_profile_shape(inp, self._ctx.active_optimization_profile)
            raise InputShapeError(
                f"{self.name}: input '{inp}' of shape {list(shape)} is outside the range the engine was built for: "
                f"min {list(lo)}, max {list(hi)} (per dimension). Resize or split the batch to fit, or export "
                "again with wider --batch/--height/--width ranges."
            )
        buffers = self._buffers.get(shape)
        if buffers is None:
            buffers = {inp: torch.empty(shape, dtype=self._torch_dtype(inp), device=self.device)}
            for name in self._outputs:
                buffers[name] = torch.empty(tuple(self._ctx.get_tensor_shape(name)), dtype=self._torch_dtype(name),
                                            device=self.device)
            self._buffers[shape] = buffers
            while len(self._buffers) > self.max_shapes:  # a graph refers to its buffers and context: all go
                old, _ = self._buffers.popitem(last=False)
                self._graphs.pop(old, None)
                self._contexts.pop(old, None)
        self._buffers.move_to_end(shape)
        for name, buf in buffers.items():
            if not self._ctx.set_tensor_address(name, buf.data_ptr()):
                raise RuntimeError(f"{self.name}: set_tensor_address failed for '{name}'")
        self._shape, self._fresh = shape, True
        return buffers

    def _use_context_of(self, shape: tuple[int, ...]) -> None:
        """Make `shape`'s own context the current one (the activation's context serves the first shape)."""
        ctx = self._contexts.get(shape)
        if ctx is None:
            ctx = self._ctx if not self._contexts else self.api.create_context(self._engine)[0]
            self._contexts[shape] = ctx
        self._ctx = ctx

    def infer(self, x):
        """Run on a torch tensor already on the runner's device: {output: the bound output buffer}.

        No host round trip: `x` is copied device-to-device into the input buffer bound for its shape,
        on the caller's current stream, and the outputs are the bound buffers themselves, so they are
        valid until the next call (copy or consume them before calling again)."""
        import torch

        if self._ctx is None:
            self._activate()
        shape = tuple(x.shape)
        buffers = self._bind(shape)
        producer = torch.cuda.current_stream()
        inp = buffers[self._inputs[0]]
        if inp.data_ptr() != x.data_ptr():
            inp.copy_(x)  # on the producer stream, after whatever wrote x
        graph = self._graphs.get(shape)
        if graph is not None and not self._fresh:
            graph.replay()  # on the producer stream: after the copy, before whatever reads the outputs
        else:
            self._enqueue(producer)
            if self._own_graphs and graph is None and shape not in self.graph_skipped:
                self._capture(shape, producer)
        self._ran = True
        return {name: buffers[name] for name in self._outputs}

    def _enqueue(self, producer) -> None:
        self._stream.wait_stream(producer)
        if not self._ctx.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"{self.name}: execute_async_v3 failed")
        producer.wait_stream(self._stream)  # readers of the outputs on the caller's stream come after the engine
        self._fresh = False

    def _capture(self, shape: tuple[int, ...], producer) -> None:
        """Capture one enqueue at `shape` (the context's current shape, enqueued once already) on the
        engine's stream; on failure, log why and keep the plain enqueue for this shape."""
        import torch

        reason = ""
        capturable = getattr(self._ctx, "is_stream_capturable", None)  # TensorRT-RTX asks the context
        if capturable is not None and not capturable(self._stream.cuda_stream):
            reason = "the execution context says its enqueue cannot be captured on this stream"
        else:
            graph = torch.cuda.CUDAGraph()
            try:
                # thread_local: the decode threads allocate pinned memory meanwhile, which "global" capture
                # mode would turn into errors in those threads.
                with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                    if not self._ctx.execute_async_v3(self._stream.cuda_stream):
                        raise RuntimeError("execute_async_v3 returned False while capturing")
                self._graphs[shape] = graph
                return
            except Exception as exc:  # noqa: BLE001 - any capture failure leaves the plain enqueue, which works
                reason = f"{type(exc).__name__}: {exc}".strip()
        self.graph_skipped[shape] = reason
        log.warning("%s: no CUDA graph for input shape %s, every call enqueues: %s", self.name, list(shape), reason)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        outs = {}
        # Copied out on the producer stream, so after the engine: the buffers are reused by the next call.
        for name, buf in self.infer(torch.from_numpy(np.ascontiguousarray(batch))).items():
            buf = buf.float() if buf.dtype in (torch.float16, torch.bfloat16) else buf
            outs[name] = buf.to("cpu", copy=True).numpy()
        return outs

    def close(self) -> None:
        """Save the TensorRT-RTX runtime cache (once, if an inference compiled anything) and release the engine."""
        if self._ctx is None:
            return
        if self._cache is not None and self._ran:
            self._stream.synchronize()
            self._cache.save()
        self._graphs = {}  # before the buffers and the contexts they replay on
        self._contexts = {}
        self._buffers, self._shape, self._ran, self._fresh = OrderedDict(), None, False, True
        self._ctx = self._cache = None
        self._engine = self._runtime = None

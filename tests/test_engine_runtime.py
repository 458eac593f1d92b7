"""EngineRunner: input shapes checked against the engine's profile, buffers reused per shape, stream
order, and the TensorRT-RTX runtime cache saved once, atomically.

No engine can run on this machine (no GPU), so the CPU tests drive the runner through a MOCK: a fake
TensorRT module, engine, execution context and CUDA streams stand in for the missing hardware. They
follow the real TensorRT Python API the runner calls (set_input_shape -> bool, get_tensor_profile_shape
-> [min, opt, max], set_tensor_address, execute_async_v3(stream handle) -> bool, runtime config/cache),
and the fake "kernel" really reads the input from, and writes the outputs to, the addresses it was
given (host memory here), so a wrong or stale binding shows up as wrong numbers. The GPU test at the
end runs a real engine.
"""

from __future__ import annotations

import contextlib
import ctypes
import types

import numpy as np
import pytest
import torch

from dinov3_deploy.errors import DeployError, InputShapeError

pytest.importorskip("tensorrt_rtx")

from dinov3_deploy.engines import trt_api  # noqa: E402
from dinov3_deploy.engines.runtime import EngineRunner  # noqa: E402
from dinov3_deploy.engines.trt_api import TrtApi, load_api  # noqa: E402

PROFILE = ((1, 3, 16, 16), (2, 3, 32, 32), (4, 3, 64, 64))


def host_array(ptr: int, shape, dtype) -> np.ndarray:
    """A numpy view of `shape` elements of `dtype` at address `ptr` (writable)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_char * n).from_address(ptr), dtype=dtype).reshape(shape)


class FakeContext:
    """Stands in for IExecutionContext. Outputs: "sum" = channel sum [b,1,h,w] fp32; "half" = 2x input, fp16."""

    active_optimization_profile = 0

    def __init__(self, log: list, capturing: list) -> None:
        self.log, self.capturing, self.shape, self.addresses = log, capturing, None, {}
        self.set_shape_calls = self.set_address_calls = 0

    def set_input_shape(self, name, shape) -> bool:
        self.set_shape_calls += 1
        lo, _, hi = PROFILE
        if name != "pixel_values" or len(shape) != 4 or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        b, c, h, w = self.shape
        return {"pixel_values": (b, c, h, w), "sum": (b, 1, h, w), "half": (b, c, h, w)}[name]

    def set_tensor_address(self, name, ptr) -> bool:
        self.set_address_calls += 1
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle) -> bool:
        # The kernels read and write the addresses and shape of the moment they are enqueued: a captured
        # enqueue replays with those (as a real CUDA graph does), whatever the context holds by then.
        addresses, shape, (b, _, h, w) = dict(self.addresses), self.shape, self.shape

        def kernel() -> None:
            x = host_array(addresses["pixel_values"], shape, np.float32)
            host_array(addresses["sum"], (b, 1, h, w), np.float32)[:] = x.sum(1, keepdims=True)
            host_array(addresses["half"], shape, np.float16)[:] = 2 * x

        if self.capturing:
            self.log.append(("captured", stream_handle))
            self.capturing[-1].work.append(kernel)
        else:
            self.log.append(("execute", stream_handle))
            kernel()
        return True


class FakeRuntimeCache:
    """Stands in for tensorrt_rtx.IRuntimeCache."""

    def __init__(self) -> None:
        self.loaded, self.serialized = None, 0

    def deserialize(self, blob) -> bool:
        self.loaded = bytes(blob)
        return True

    def serialize(self) -> bytes:
        self.serialized += 1
        return b"jit-kernels-%d" % self.serialized


class FakeEngine:
    """Stands in for ICudaEngine: one input, two outputs, one optimisation profile."""

    def __init__(self, log: list) -> None:
        self.log, self.cache = log, FakeRuntimeCache()
        self.names = ["pixel_values", "sum", "half"]
        self.contexts: list[FakeContext] = []
        self.capturing: list[FakeGraph] = []  # the graph being captured (FakeContext records into it)

    num_io_tensors = 3

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name == "pixel_values" else "OUTPUT"

    def get_tensor_dtype(self, name):
        return "DataType.HALF" if name == "half" else "DataType.FLOAT"

    def get_tensor_profile_shape(self, name, profile_index):
        assert name == "pixel_values" and profile_index == 0
        return [list(d) for d in PROFILE]

    def create_runtime_config(self):
        cache = self.cache
        self.config = types.SimpleNamespace(create_runtime_cache=lambda: cache, set_runtime_cache=lambda c: None,
                                            cuda_graph_strategy="DISABLED")
        return self.config

    def create_execution_context(self, runtime_config=None):
        self.contexts.append(FakeContext(self.log, self.capturing))
        return self.contexts[-1]


class FakeLogger:
    WARNING = 2

    def __init__(self, severity) -> None:
        pass


class FakeStream:
    """Stands in for torch.cuda.Stream: records waits, so the test can check the order of work."""

    def __init__(self, label: str, log: list, handle: int) -> None:
        self.label, self.log, self.cuda_stream = label, log, handle

    def wait_stream(self, other: FakeStream) -> None:
        self.log.append(("wait", self.label, other.label))

    def synchronize(self) -> None:
        self.log.append(("sync", self.label))


class FakeGraph:
    """Stands in for torch.cuda.CUDAGraph: holds the kernels enqueued while it was captured; replay runs
    them again on the caller's current stream."""

    def __init__(self, log: list) -> None:
        self.log, self.work = log, []

    def replay(self) -> None:
        self.log.append(("replay", torch.cuda.current_stream().label))
        for kernel in self.work:
            kernel()


def fake_graph_capture(engine: FakeEngine, fail: list):
    """Stands in for torch.cuda.graph(graph, stream=..., capture_error_mode=...); raises at the end of the
    capture, as torch does when CUDA invalidated it, while `fail` is non-empty."""

    @contextlib.contextmanager
    def graph(cuda_graph, stream=None, capture_error_mode="global"):
        engine.log.append(("capture", stream.label, capture_error_mode))
        engine.capturing.append(cuda_graph)
        try:
            yield
        finally:
            engine.capturing.pop()
        if fail:
            raise RuntimeError(fail[0])

    return graph


@pytest.fixture
def runner(tmp_path, monkeypatch):
    """An EngineRunner over the MOCK engine above (no GPU here), buffers in host memory."""
    log: list = []
    engine = FakeEngine(log)
    fake_trt = types.SimpleNamespace(
        Logger=FakeLogger,
        Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine),
        TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
        CudaGraphStrategy=types.SimpleNamespace(DISABLED="DISABLED", WHOLE_GRAPH_CAPTURE="WHOLE_GRAPH_CAPTURE"),
    )
    producer = FakeStream("producer", log, 7)
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: FakeStream("engine", log, 11))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: producer)
    capture_fails: list = []
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: FakeGraph(log))
    monkeypatch.setattr(torch.cuda, "graph", fake_graph_capture(engine, capture_fails))
    (tmp_path / "m.engine").write_bytes(b"serialised engine")
    r = EngineRunner(tmp_path / "m.engine", "tensorrt-rtx", runtime_cache=tmp_path / "rtx.cache", name="mock")
    r.api = TrtApi("tensorrt-rtx", fake_trt)
    r.device = "cpu"
    r.fake_engine, r.log, r.capture_fails = engine, log, capture_fails
    return r


@pytest.fixture
def full_trt(runner):
    """The same MOCK engine run as full TensorRT, where the runner captures CUDA graphs itself
    (TensorRT-RTX captures its own: test_rtx_captures_its_own_graphs)."""
    runner.api = TrtApi("tensorrt", runner.api.trt)
    return runner


def batch(b, h, w, seed=0):
    return np.random.default_rng(seed).standard_normal((b, 3, h, w)).astype(np.float32)


def test_shape_outside_the_profile_says_the_range(runner):
    with pytest.raises(InputShapeError) as err:
        runner.run(batch(1, 80, 32))  # height 80 > the profile's 64
    msg = str(err.value)
    assert isinstance(err.value, DeployError)  # the CLI prints it without a traceback
    assert "'pixel_values'" in msg and "[1, 3, 80, 32]" in msg
    assert "min [1, 3, 16, 16], max [4, 3, 64, 64]" in msg
    out = runner.run(batch(2, 32, 32))  # the runner is still usable after the refusal
    assert out["sum"].shape == (2, 1, 32, 32)


def test_buffers_are_bound_once_per_shape_and_outputs_follow_the_input(runner):
    a1, a2, b = batch(2, 32, 48, 1), batch(2, 32, 48, 2), batch(1, 16, 64, 3)
    out1 = runner.run(a1)
    ctx = runner.fake_engine.contexts[0]
    addresses = dict(ctx.addresses)
    out2 = runner.run(a2)
    assert (ctx.set_shape_calls, ctx.set_address_calls) == (1, 3)  # second call of the shape: nothing re-bound
    assert ctx.addresses == addresses
    for x, out in ((a1, out1), (a2, out2)):  # each call's outputs are its own, not the previous call's
        np.testing.assert_allclose(out["sum"], x.sum(1, keepdims=True), rtol=1e-6)
        assert out["half"].dtype == np.float32  # fp16 outputs come back as float32
        np.testing.assert_allclose(out["half"], 2 * x, rtol=1e-3)
    assert not np.shares_memory(out1["sum"], out2["sum"])  # returned arrays do not alias the reused buffers
    out3 = runner.run(b)
    assert (ctx.set_shape_calls, ctx.set_address_calls) == (2, 6)
    np.testing.assert_allclose(out3["sum"], b.sum(1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(runner.run(a1)["sum"], out1["sum"])  # back to the first shape: bound again


def test_engine_stream_waits_for_the_producer_and_the_producer_for_the_engine(runner):
    runner.cuda_graphs = False
    runner.run(batch(1, 16, 16))
    runner.run(batch(1, 16, 16))
    order = [("wait", "engine", "producer"), ("execute", 11), ("wait", "producer", "engine")]
    assert runner.log == order * 2  # no capture, no replay: every call enqueues


def test_rtx_captures_its_own_graphs(runner):
    """TensorRT-RTX: graphs are its runtime config's WHOLE_GRAPH_CAPTURE (an outside capture needs
    engines built with REQUIRE_USER_ALLOCATION), so the runner enqueues and never captures."""
    for seed in range(3):
        runner.run(batch(1, 16, 16, seed))
    assert runner.fake_engine.config.cuda_graph_strategy == "WHOLE_GRAPH_CAPTURE"
    assert not [e for e in runner.log if e[0] in ("capture", "replay")] and not runner._graphs


def test_rtx_graphs_off_leaves_the_strategy_disabled(runner):
    runner.cuda_graphs = False
    runner.run(batch(1, 16, 16))
    assert runner.fake_engine.config.cuda_graph_strategy == "DISABLED"


def test_cuda_graph_per_shape_replays_on_the_callers_stream_after_one_enqueue(full_trt):
    runner = full_trt
    """First call of a shape: enqueue (TensorRT's warm-up), then capture on the engine stream; later calls
    of that shape replay on the producer stream with the new input, also back from another shape: each
    shape has an execution context of its own, which never leaves that shape, so its graph replays on
    the very state it was captured from. Each call's outputs are its own input's (a replay reading a
    stale input would fail here)."""
    a1, a2, a3, b1 = batch(2, 32, 48, 1), batch(2, 32, 48, 2), batch(2, 32, 48, 3), batch(1, 16, 64, 4)
    eager = [("wait", "engine", "producer"), ("execute", 11), ("wait", "producer", "engine")]
    capture = [("capture", "engine", "thread_local"), ("captured", 11)]
    expected = {id(a1): eager + capture, id(a2): [("replay", "producer")], id(b1): eager + capture,
                id(a3): [("replay", "producer")]}
    for x in (a1, a2, b1, a3):
        del runner.log[:]
        out = runner.run(x)
        assert runner.log == expected[id(x)]
        np.testing.assert_allclose(out["sum"], x.sum(1, keepdims=True), rtol=1e-6)
        np.testing.assert_allclose(out["half"], 2 * x, rtol=1e-3)
    del runner.log[:]
    np.testing.assert_allclose(runner.run(a1)["sum"], a1.sum(1, keepdims=True), rtol=1e-6)
    assert runner.log == [("replay", "producer")]
    assert sorted(runner._graphs) == [(1, 3, 16, 64), (2, 3, 32, 48)] and not runner.graph_skipped
    # one context per shape, each set to its shape once and never to another
    ctxs = runner.fake_engine.contexts
    assert [c.shape for c in ctxs] == [(2, 3, 32, 48), (1, 3, 16, 64)] and [c.set_shape_calls for c in ctxs] == [1, 1]


def test_per_shape_contexts_go_with_their_buffers(full_trt):
    """At most max_shapes shapes keep buffers, graph and context; the least recently used goes whole."""
    runner = full_trt
    runner.max_shapes = 2
    for h in (16, 32, 48, 16):
        runner.run(batch(1, h, 16))
    assert sorted(runner._contexts) == sorted(runner._buffers) == sorted(runner._graphs) == [(1, 3, 16, 16),
                                                                                            (1, 3, 48, 16)]
    assert len(runner.fake_engine.contexts) == 4  # 16 was dropped after 48 came in, then made again


def test_a_shape_that_cannot_be_captured_keeps_the_plain_enqueue_and_says_why(full_trt, caplog):
    runner = full_trt
    runner.capture_fails.append("operation not permitted when stream is capturing")
    x1, x2 = batch(1, 32, 32, 1), batch(1, 32, 32, 2)
    with caplog.at_level("WARNING", logger="dinov3_deploy.engines"):
        runner.run(x1)
        del runner.log[:]
        out = runner.run(x2)
    eager = [("wait", "engine", "producer"), ("execute", 11), ("wait", "producer", "engine")]
    assert runner.log == eager  # no second capture attempt for this shape, and no replay
    np.testing.assert_allclose(out["sum"], x2.sum(1, keepdims=True), rtol=1e-6)
    assert "not permitted" in runner.graph_skipped[(1, 3, 32, 32)]
    assert [r.getMessage() for r in caplog.records if "no CUDA graph" in r.getMessage()] == [
        "mock: no CUDA graph for input shape [1, 3, 32, 32], every call enqueues: "
        "RuntimeError: operation not permitted when stream is capturing"]


def test_a_context_that_is_not_capturable_is_not_captured(full_trt, monkeypatch):
    runner = full_trt
    runner.run(batch(1, 16, 16))  # activates
    # the contexts' own answer, where they have the query (each shape's context is asked)
    monkeypatch.setattr(FakeContext, "is_stream_capturable", lambda self, stream: False, raising=False)
    del runner.log[:]
    runner.run(batch(2, 16, 16))
    assert not [e for e in runner.log if e[0] == "capture"]
    assert "cannot be captured" in runner.graph_skipped[(2, 3, 16, 16)]


def test_runtime_cache_is_loaded_then_saved_once_atomically_on_close(runner, tmp_path, monkeypatch):
    cache_file = tmp_path / "rtx.cache"
    cache_file.write_bytes(b"from a previous run")
    writes = []
    real_write = trt_api.write_bytes
    monkeypatch.setattr(trt_api, "write_bytes", lambda p, d: (writes.append(p), real_write(p, d)))
    for seed in range(3):
        runner.run(batch(1, 16, 16, seed))
    cache = runner.fake_engine.cache
    assert cache.loaded == b"from a previous run"
    assert cache.serialized == 0 and cache_file.read_bytes() == b"from a previous run"  # not per inference
    runner.close()
    runner.close()
    assert cache.serialized == 1 and writes == [cache_file]  # once, through the atomic writer
    assert cache_file.read_bytes() == b"jit-kernels-1"


def test_close_without_inference_leaves_the_cache_file_alone(runner, tmp_path):
    (tmp_path / "rtx.cache").write_bytes(b"good")
    with pytest.raises(InputShapeError):
        runner.run(batch(8, 16, 16))  # refused: nothing ran
    runner.close()
    assert runner.fake_engine.cache.serialized == 0 and (tmp_path / "rtx.cache").read_bytes() == b"good"


def _real_engine(tmp_path):
    """A real engine of the small conv graph at tmp_path/m.engine (skips where this GPU cannot run the
    flavour); returns (api, the fp32 ONNX path, comparable to ONNX Runtime's CPU result)."""
    from onnx import TensorProto
    from test_engine_build import SHAPES, conv_graph

    from dinov3_deploy.engines.build import build_engine, network_from_onnx, profiles_from_shapes

    api = load_api("auto")
    targets = None
    if api.is_rtx:
        major, minor = torch.cuda.get_device_capability()
        targets = [f"SM{major}{minor}"]
        ok, reason = api.runnable_here(targets)
        if not ok:
            pytest.skip(reason)
    onnx_path = conv_graph(tmp_path / "m.onnx", dtype=TensorProto.FLOAT)
    net = network_from_onnx(onnx_path, api)
    build_engine(net, profiles_from_shapes(net, SHAPES), workspace_gib=0.5, targets=targets).save(tmp_path / "m.engine")
    return api, onnx_path


@pytest.mark.gpu
def test_real_engine_runs_on_a_side_stream_and_matches_onnxruntime(tmp_path):
    """A real engine on a GPU this machine's TensorRT can run (full TensorRT, or TensorRT-RTX off Hopper)."""
    import onnxruntime as ort

    api, onnx_path = _real_engine(tmp_path)
    runner = EngineRunner(tmp_path / "m.engine", api.flavor, api.version, runtime_cache=tmp_path / "rt.cache")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # the caller's current stream is not the default one
        for shape in ((2, 3, 32, 48), (2, 3, 32, 48), (1, 3, 64, 16)):
            x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
            out = runner.run(x)["out"]
            np.testing.assert_allclose(out, session.run(None, {"pixel_values": x})[0], rtol=1e-2, atol=1e-2)  # TF32
    with pytest.raises(InputShapeError, match=r"min \[1, 3, 16, 16\], max \[8, 3, 64, 64\]"):
        runner.run(np.zeros((1, 3, 128, 16), np.float32))
    runner.close()
    assert (tmp_path / "rt.cache").exists() == api.is_rtx


@pytest.mark.gpu
def test_real_engine_cuda_graph_replay_equals_eager(tmp_path):
    """Graphs on vs off on the same engine, shapes alternating as the sliding window's full and last batches
    do: every call's outputs equal (replays read the new input), and each shape got a graph or a logged reason."""
    api, _ = _real_engine(tmp_path)
    graphed = EngineRunner(tmp_path / "m.engine", api.flavor, api.version)
    eager = EngineRunner(tmp_path / "m.engine", api.flavor, api.version)
    eager.cuda_graphs = False
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        for i, shape in enumerate([(4, 3, 32, 32), (4, 3, 32, 32), (1, 3, 32, 32), (4, 3, 32, 32), (4, 3, 32, 32),
                                   (1, 3, 32, 32), (1, 3, 32, 32)]):
            x = torch.randn(shape, device="cuda", generator=torch.Generator("cuda").manual_seed(i))
            want = {k: v.clone() for k, v in eager.infer(x).items()}
            got = graphed.infer(x)
            for k in want:
                torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)
    assert set(graphed._graphs) | set(graphed.graph_skipped) == {(4, 3, 32, 32), (1, 3, 32, 32)}
    graphed.close()
    eager.close()

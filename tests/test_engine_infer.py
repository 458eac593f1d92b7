"""EngineRunner.infer: torch tensors in, the bound output buffers out, no host round trip. Driven by
the MOCK engine of test_engine_runtime.py (its fake kernel reads and writes the bound addresses)."""

import pytest
import torch

pytest.importorskip("tensorrt_rtx")

from test_engine_runtime import batch, runner  # noqa: E402, F401 - the mock engine fixture


def test_infer_returns_the_bound_buffers_and_binds_once_per_shape(runner):  # noqa: F811
    x = torch.from_numpy(batch(2, 32, 48, 1))
    out = runner.infer(x)
    ctx = runner.fake_engine.contexts[0]
    assert isinstance(out["sum"], torch.Tensor) and out["half"].dtype == torch.float16
    torch.testing.assert_close(out["sum"], x.sum(1, keepdim=True))
    ptr = out["sum"].data_ptr()
    assert ctx.addresses["sum"] == ptr  # the output is the buffer the engine wrote, not a copy
    y = torch.from_numpy(batch(2, 32, 48, 2))
    again = runner.infer(y)
    assert again["sum"].data_ptr() == ptr and (ctx.set_shape_calls, ctx.set_address_calls) == (1, 3)
    torch.testing.assert_close(again["sum"], y.sum(1, keepdim=True))  # overwritten: valid until the next call
    # An input that already is the bound buffer is not copied onto itself.
    bound = runner._buffers[tuple(x.shape)]["pixel_values"]  # the buffers bound for this shape
    bound.copy_(x)
    torch.testing.assert_close(runner.infer(bound)["sum"], x.sum(1, keepdim=True))
    assert runner.log[-3:] == [("wait", "engine", "producer"), ("execute", 11), ("wait", "producer", "engine")]

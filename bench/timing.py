"""The one clock of every benchmark. Returns every sample so reports can show the spread.

Two GPU clocks, because kernels and models need different things:
  * kernels (`measure_kernel`): `triton.testing.do_bench`. It flushes the L2 cache before every
    timed call, so a kernel is not credited with inputs a previous repetition left in L2 (an
    attention problem of a few MiB fits in an H100's 50 MiB L2), and it sizes warm-up and
    repetitions by time (milliseconds), not by count.
  * models (`measure`): CUDA events around each call, no host sync in the loop; a forward pass
    streams far more than L2 holds, and clearing L2 would only add a memset to every sample.
On the CPU (including the Triton interpreter) both fall back to perf_counter over a fixed count.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

CLOCK_EVENTS = "cuda-events"
CLOCK_DO_BENCH = "triton-do_bench"  # CUDA events, L2 flushed before each sample
CLOCK_CPU = "perf_counter"


@dataclass(frozen=True)
class Timing:
    samples_ms: list[float]
    clock: str  # CLOCK_EVENTS | CLOCK_DO_BENCH | CLOCK_CPU

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    def percentile(self, q: float) -> float:
        s = sorted(self.samples_ms)
        k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
        return s[k]

    def summary(self) -> dict:
        return {
            "median_ms": round(self.median_ms, 4),
            "p10_ms": round(self.percentile(10), 4),
            "p90_ms": round(self.percentile(90), 4),
            "min_ms": round(min(self.samples_ms), 4),
            "iters": len(self.samples_ms),
            "clock": self.clock,
        }

    def to_dict(self) -> dict:
        return asdict(self)


def measure(fn: Callable[[], object], *, warmup: int = 3, iters: int = 10, cuda: bool = False) -> Timing:
    """A model: call fn warmup times untimed, then iters times timed (CUDA events or perf_counter)."""
    if iters < 1:
        raise ValueError("iters must be >= 1")
    for _ in range(warmup):
        fn()
    if cuda:
        import torch

        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        return Timing([s.elapsed_time(e) for s, e in zip(starts, ends)], CLOCK_EVENTS)
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return Timing(samples, CLOCK_CPU)


def measure_kernel(fn: Callable[[], object], *, cuda: bool, warmup_ms: float = 25, rep_ms: float = 100,
                   warmup: int = 1, iters: int = 3) -> Timing:
    """A kernel: on a GPU `triton.testing.do_bench` (warmup_ms / rep_ms of GPU time, L2 flushed
    before every sample); on the CPU `measure` with warmup / iters calls."""
    if not cuda:
        return measure(fn, warmup=warmup, iters=iters, cuda=False)
    from triton.testing import do_bench

    # return_mode="all" (every sample) arrived in Triton 3.x; an older Triton on the GPU machine
    # gets the same CUDA-event loop without the L2 flush, and the row's clock says so.
    if "return_mode" not in inspect.signature(do_bench).parameters:
        return measure(fn, warmup=max(warmup, 3), iters=max(iters, 20), cuda=True)
    try:
        samples = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
    except AssertionError:  # a return_mode parameter that does not know "all"
        return measure(fn, warmup=max(warmup, 3), iters=max(iters, 20), cuda=True)
    return Timing([float(s) for s in samples], CLOCK_DO_BENCH)

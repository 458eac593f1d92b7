"""Wall-clock measurement of one callable: CUDA events on a GPU (device time, no host sync in the
loop), perf_counter on the CPU. Returns every sample so reports can show the spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Timing:
    samples_ms: list[float]
    clock: str  # "cuda-events" | "perf_counter"

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
    """Call fn warmup times untimed, then iters times timed."""
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
        return Timing([s.elapsed_time(e) for s, e in zip(starts, ends)], "cuda-events")
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return Timing(samples, "perf_counter")

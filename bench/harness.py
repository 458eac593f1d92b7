"""The benchmark: every target (a PyTorch configuration or an artifact backend) behind one face,
timed on the same deterministic inputs and compared with the fp32 PyTorch reference.

A target is three plain functions, so the harness knows nothing about any backend:
    prepare(host batch) -> what `call` takes (e.g. a device tensor; untimed)
    call(prepared)      -> outputs (the timed work)
    fetch(outputs)      -> {name: numpy array} (untimed, for parity)
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dinov3_deploy.parity import compare

from .timing import measure


@dataclass
class Target:
    name: str
    precision: str  # decides which parity thresholds apply
    prepare: Callable[[np.ndarray], object] | None = None
    call: Callable[[object], object] | None = None
    fetch: Callable[[object], dict[str, np.ndarray]] | None = None
    cuda: bool = False
    skip_reason: str = ""
    info: dict = field(default_factory=dict)
    close: Callable[[], None] | None = None  # releases the backend (sessions, engines) after timing


@dataclass(frozen=True)
class Shape:
    batch: int
    height: int
    width: int

    @property
    def label(self) -> str:
        return f"{self.batch}x{self.height}x{self.width}"


def runner_target(runner, precision: str, name: str | None = None) -> Target:
    """A `Runner` (run(np batch) -> dict of np arrays): host-to-host time, as an application sees it."""
    return Target(name or runner.name, precision, prepare=lambda b: b, call=runner.run, fetch=lambda o: o,
                  close=getattr(runner, "close", None))


def torch_target(module, name: str, precision: str, device: str, compile_mode: str | None = None) -> Target:
    """A DeployModule-like module (tuple outputs named by `output_names`) on `device`."""
    import torch

    module = module.to(device).eval()
    fn = torch.compile(module, mode=compile_mode) if compile_mode else module
    names = list(module.output_names)

    def call(x):
        with torch.inference_mode():
            return fn(x)

    def fetch(outs):
        return {n: o.detach().float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy()
                for n, o in zip(names, outs)}

    return Target(name, precision, prepare=lambda b: torch.from_numpy(np.ascontiguousarray(b)).to(device),
                  call=call, fetch=fetch, cuda=device.startswith("cuda"))


def _peak_memory_reset(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_memory_mb(cuda: bool) -> float | None:
    if not cuda:
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def run_benchmark(
    targets: list[Target],
    shapes: list[Shape],
    make_input: Callable[[Shape], np.ndarray],
    reference: Target,
    task: str,
    *,
    warmup: int = 3,
    iters: int = 10,
    log: Callable[[str], None] = lambda msg: None,
) -> list[dict]:
    """One row per (target, shape): latency statistics, throughput, peak memory, parity."""
    try:
        return _run(targets, shapes, make_input, reference, task, warmup, iters, log)
    finally:
        for t in targets:
            if t.close is not None:
                t.close()


def _run(targets, shapes, make_input, reference, task, warmup, iters, log) -> list[dict]:
    rows = []
    for shape in shapes:
        batch = make_input(shape)
        log(f"reference {reference.name} on {shape.label}")
        ref = reference.fetch(reference.call(reference.prepare(batch)))
        for t in targets:
            row = {"target": t.name, "precision": t.precision, "shape": shape.label, "batch": shape.batch,
                   "height": shape.height, "width": shape.width, **t.info}
            if t.skip_reason:
                rows.append({**row, "status": "skipped", "reason": t.skip_reason})
                continue
            log(f"{t.name} on {shape.label}")
            try:
                x = t.prepare(batch)
                t0 = time.perf_counter()
                out = t.fetch(t.call(x))  # first call: compilation, autotuning, allocation
                first_s = time.perf_counter() - t0
                _peak_memory_reset(t.cuda)
                timing = measure(functools.partial(t.call, x), warmup=warmup, iters=iters, cuda=t.cuda)
                parity = compare(ref, out, shape.label, task, t.precision)
            except Exception as exc:  # noqa: BLE001 - a crashing target is reported, not fatal
                rows.append({**row, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:400]})
                continue
            lat = timing.summary()
            rows.append({
                **row,
                "status": "ok" if all(p.passed for p in parity) else "parity-failed",
                **lat,
                "first_call_s": round(first_s, 3),
                "images_per_s": round(shape.batch / (lat["median_ms"] / 1e3), 2),
                "peak_mem_mb": _peak_memory_mb(t.cuda),
                "parity": [p.to_dict() for p in parity],
            })
    return rows

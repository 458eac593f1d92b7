"""The benchmark: every target (a PyTorch configuration or an artifact backend) behind one face,
timed on the same deterministic inputs and compared with the fp32 PyTorch reference. The kernel
benchmark (kernels_bench.py) builds its rows with the same `timed_row`, so model and kernel
reports hold the same row: status, timing statistics, parity.

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

from dinov3_deploy.verification.parity import OutputParity, compare

from .timing import CLOCK_CPU, Timing, measure


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
    # the reference outputs this target computes, compared for parity (empty: all of them); a single
    # head timed beside its multi-head graph (multi_head.py) computes only its own
    outputs: tuple[str, ...] = ()


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


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def timed_row(
    row: dict,
    call: Callable[[], object],
    timer: Callable[[Callable[[], object]], Timing],
    *,
    check: Callable[[object], list[OutputParity]] | None = None,
    cuda: bool = False,
    track_memory: bool = False,
    flops: float | None = None,
) -> dict:
    """One row of every report, model or kernel: `row` (what was run) plus status, timing and
    parity. The first call is timed on its own (compilation, autotuning, allocation) and its
    output is what `check` compares with the reference; then `timer(call)` takes the samples.
    Status: "ok", "parity-failed" (timed, but outside the thresholds) or "failed" (raised, with
    the reason); a crashing case is a result, not the end of the run."""
    try:
        t0 = time.perf_counter()
        out = call()
        _sync(cuda)
        first_s = time.perf_counter() - t0
        parity = check(out) if check is not None else []
        del out
        if track_memory:
            _peak_memory_reset(cuda)
        timing = timer(call)
    except Exception as exc:  # noqa: BLE001 - a crashing target is reported, not fatal
        return {**row, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:400]}
    lat = timing.summary()
    res = {
        **row,
        "status": "ok" if all(p.passed for p in parity) else "parity-failed",
        **lat,
        "first_call_s": round(first_s, 3),
        "peak_mem_mb": _peak_memory_mb(cuda) if track_memory else None,
        "parity": [p.to_dict() for p in parity],
    }
    if flops:
        res["tflops"] = float(f"{flops / lat['median_ms'] / 1e9:.4g}")
    return res


def skipped_row(row: dict, reason: str) -> dict:
    return {**row, "status": "skipped", "reason": reason}


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
    interleave: bool = False,
) -> list[dict]:
    """One row per (target, shape): latency statistics, throughput, peak memory, parity.

    interleave: time the targets of a shape in rounds (one call of each per round, `iters` rounds after
    `warmup`) instead of one target after the other. Rows that are compared with each other (a
    multi-head graph and its single heads) then see the same machine: on shared CPUs the load changes
    by 2x within minutes, and back-to-back blocks would give that change to whichever target ran then.
    Peak memory is not tracked in this mode (one reset would span every target)."""
    try:
        if interleave:
            return _run_interleaved(targets, shapes, make_input, reference, task, warmup, iters, log)
        return _run(targets, shapes, make_input, reference, task, warmup, iters, log)
    finally:
        for t in targets:
            if t.close is not None:
                t.close()


def _check(ref: dict, t: Target, case: str, task: str, out: object) -> list[OutputParity]:
    if t.outputs:
        ref = {name: ref[name] for name in t.outputs}
    return compare(ref, t.fetch(out), case, task, t.precision)


def _reference(reference: Target, make_input, shape, log) -> tuple[object, dict]:
    """The input batch of `shape` and the reference's outputs on it (what every target is checked against)."""
    batch = make_input(shape)
    log(f"reference {reference.name} on {shape.label}")
    return batch, reference.fetch(reference.call(reference.prepare(batch)))


def _run(targets, shapes, make_input, reference, task, warmup, iters, log) -> list[dict]:
    rows = []
    for shape in shapes:
        batch, ref = _reference(reference, make_input, shape, log)
        for t in targets:
            row = _row(t, shape)
            if t.skip_reason:
                rows.append(skipped_row(row, t.skip_reason))
                continue
            log(f"{t.name} on {shape.label}")
            try:
                x = t.prepare(batch)
            except Exception as exc:  # noqa: BLE001 - reported like a failing call
                rows.append(_failed(row, exc))
                continue
            r = timed_row(row, functools.partial(t.call, x),
                          functools.partial(measure, warmup=warmup, iters=iters, cuda=t.cuda),
                          check=functools.partial(_check, ref, t, shape.label, task),
                          cuda=t.cuda, track_memory=True)
            if "median_ms" in r:
                r["images_per_s"] = round(shape.batch / (r["median_ms"] / 1e3), 2)
            rows.append(r)
    return rows


def _row(t: Target, shape: Shape) -> dict:
    return {"target": t.name, "precision": t.precision, "shape": shape.label, "batch": shape.batch,
            "height": shape.height, "width": shape.width, **t.info}


def _failed(row: dict, exc: Exception) -> dict:
    return {**row, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:400]}


def _run_interleaved(targets, shapes, make_input, reference, task, warmup, iters, log) -> list[dict]:
    rows = []
    for shape in shapes:
        batch, ref = _reference(reference, make_input, shape, log)
        done: dict[str, dict] = {}
        live = []  # (target, row, call, first call seconds, parity)
        for t in targets:
            row = _row(t, shape)
            if t.skip_reason:
                done[t.name] = skipped_row(row, t.skip_reason)
                continue
            log(f"{t.name} on {shape.label}: first call")
            try:
                call = functools.partial(t.call, t.prepare(batch))
                t0 = time.perf_counter()
                out = call()
                _sync(t.cuda)
                first_s = time.perf_counter() - t0
                parity = _check(ref, t, shape.label, task, out)
                del out
            except Exception as exc:  # noqa: BLE001 - a crashing target is reported, not fatal
                done[t.name] = _failed(row, exc)
                continue
            live.append((t, row, call, first_s, parity))
        samples: dict[str, list[float]] = {t.name: [] for t, *_ in live}
        for i in range(warmup + iters):
            log(f"{'warm-up' if i < warmup else 'timed'} round {i + 1 if i < warmup else i - warmup + 1} "
                f"of {warmup if i < warmup else iters} on {shape.label}")
            for t, row, call, *_ in live:
                if t.name in done:
                    continue
                try:
                    t0 = time.perf_counter()
                    call()
                    _sync(t.cuda)
                    if i >= warmup:
                        samples[t.name].append((time.perf_counter() - t0) * 1e3)
                except Exception as exc:  # noqa: BLE001
                    done[t.name] = _failed(row, exc)
        for t, row, _, first_s, parity in live:
            if t.name in done:
                continue
            lat = Timing(samples[t.name], CLOCK_CPU).summary()
            done[t.name] = {**row, "status": "ok" if all(p.passed for p in parity) else "parity-failed", **lat,
                            "first_call_s": round(first_s, 3), "peak_mem_mb": None,
                            "parity": [p.to_dict() for p in parity], "interleaved": True,
                            "images_per_s": round(shape.batch / (lat["median_ms"] / 1e3), 2)}
        rows += [done[t.name] for t in targets]
    return rows

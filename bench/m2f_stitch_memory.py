"""Peak memory of the Mask2Former stitch of one view: the current path against the chunked one.

    python -m dinov3_deploy.bench.m2f_stitch_memory [--device cuda] [--out bench/results/m2f-stitch-memory-cpu.json]

Both start from the same windows' class logits [n, Q, C+1] and stride-4 mask logits [n, Q, h/4, w/4]
(random, trained-like magnitudes), already in memory and not counted:
  scores   the path `--stitch torch` runs: per batch of windows the release's semantic scores at the
           window size (what the graph's `scores` output materialises: [b, C, h, w] fp32), summed by
           the reference slide_inference (which copies them once more when it resizes them to the
           window), then divided and resized to the image;
  chunked  runtime/m2f_stitch.py: query and class chunks added straight into the view's canvas.
Peak = the most memory allocated above the start while the path runs: on a GPU
torch.cuda.max_memory_allocated, on the CPU the running sum of the allocations torch.profiler records
(profile_memory). Both paths end with the view's scores at the image size; their labels are compared.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

MIB = 1 << 20


def peak_bytes(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[int, torch.Tensor, float]:
    """(peak bytes allocated above the start while `fn` runs, its result, seconds)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start, out, time.perf_counter() - t0
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return peak, out, seconds


def scores_path(cls, masks, view_hw, crop, stride, out_size, batch) -> torch.Tensor:
    """The `--stitch torch` path: the window's semantic scores (the graph's output), slide_inference."""
    from dinov3_deploy.reference.models.m2f_segmentor import semantic_scores
    from dinov3_deploy.reference.protocol.sliding_window import slide_inference

    starts = iter(range(0, cls.shape[0], batch))

    def window_scores(crops):
        k = next(starts)
        return semantic_scores(cls[k:k + batch], masks[k:k + batch], tuple(crops.shape[-2:]))

    image = torch.empty(1, 3, *view_hw, device=cls.device)
    return slide_inference(window_scores, image, cls.shape[-1] - 1, crop, stride, out_size=out_size,
                           batch_size=batch)


def chunked_path(cls, masks, geometry, out_size, batch, q_chunk, c_chunk) -> torch.Tensor:
    from dinov3_deploy.runtime.m2f_stitch import add_windows, finish_view, m2f_canvas

    canvas, count = m2f_canvas(geometry, cls.shape[-1] - 1, cls.device)
    windows = geometry.windows()
    for s in range(0, len(windows), batch):
        add_windows(canvas, cls[s:s + batch], masks[s:s + batch], windows[s:s + batch], q_chunk=q_chunk,
                    c_chunk=c_chunk)
    return finish_view(canvas, count, out_size)


def measure(args) -> dict:
    from dinov3_deploy.bench.machine import machine_info
    from dinov3_deploy.reference.protocol.m2f import view_size
    from dinov3_deploy.reference.protocol.sliding_window import window_geometry
    from dinov3_deploy.runtime.m2f_stitch import C_CHUNK, Q_CHUNK

    device = torch.device(args.device)
    h, w = args.image
    view_hw = view_size(h, w, args.window)
    stride = round(args.window * 596 / 896)
    g = window_geometry(*view_hw, args.window, stride)
    gen = torch.Generator().manual_seed(0)
    cls = (4 * torch.randn(len(g), args.queries, args.classes + 1, generator=gen)).to(device)
    masks = (8 * torch.randn(len(g), args.queries, g.win_h // 4, g.win_w // 4, generator=gen)).to(device)
    rows, labels = [], {}
    q_chunk, c_chunk = args.q_chunk or Q_CHUNK, args.c_chunk or C_CHUNK
    runs = [(f"scores, {b} window(s) a batch", "scores", b,
             lambda b=b: scores_path(cls, masks, view_hw, args.window, stride, (h, w), b)) for b in args.batches]
    runs.append((f"chunked (q {q_chunk}, c {c_chunk})", "chunked", 1,
                 lambda: chunked_path(cls, masks, g, (h, w), 1, q_chunk, c_chunk)))
    for name, path, batch, fn in runs:
        with torch.no_grad():
            peak, out, seconds = peak_bytes(fn, device)
        labels[name] = out.argmax(1)
        rows.append({"path": path, "name": name, "batch_windows": batch, "peak_mib": round(peak / MIB, 1),
                     "seconds": round(seconds, 3), "out": out})
    ref = rows[0]["out"]
    for r in rows:
        out = r.pop("out")
        r["max_abs_vs_scores_path"] = float((out - ref).abs().max())
        r["labels_equal_scores_path"] = bool(torch.equal(labels[r["name"]], labels[rows[0]["name"]]))
    window_scores = args.classes * g.win_h * g.win_w * 4
    return {
        "what": "peak memory of one view's M2F stitch from its windows' class and mask logits",
        "machine": machine_info(),
        "device": str(device),
        "config": {"image": [h, w], "view": list(view_hw), "window": args.window, "stride": stride,
                   "windows": len(g), "classes": args.classes, "queries": args.queries},
        "sizes_mib": {"one window's scores (fp32)": round(window_scores / MIB, 1),
                      "view canvas (fp32)": round(args.classes * view_hw[0] * view_hw[1] * 4 / MIB, 1),
                      "scores at the image size (fp32)": round(args.classes * h * w * 4 / MIB, 1)},
        "rows": rows,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> None:
    from dinov3_deploy.atomic import write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--image", type=int, nargs=2, default=(512, 683), metavar=("H", "W"),
                   help="image size (default: a typical ADE20K image; its view has short side = the window)")
    p.add_argument("--window", type=int, default=896)
    p.add_argument("--classes", type=int, default=150)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2], help="windows per batch, scores path")
    p.add_argument("--q-chunk", type=int, default=None)
    p.add_argument("--c-chunk", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = p.parse_args(argv)
    report = measure(args)
    print(f"{report['config']} on {report['device']}")
    for r in report["rows"]:
        print(f"  {r['name']:<32} peak {r['peak_mib']:8.1f} MiB  {r['seconds']:7.2f} s  "
              f"labels equal: {r['labels_equal_scores_path']}  max abs {r['max_abs_vs_scores_path']:.1e}")
    if args.out:
        write_json(Path(args.out), report)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

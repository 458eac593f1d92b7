"""Benchmark of the performance core on one GPU, in one run (issue 5's figures).

    python bench/kernels_bench.py --out results.json          # on a CUDA GPU (Hopper targets)
    python bench/kernels_bench.py --smoke --out smoke.json    # CPU: tiny shapes, Triton interpreter

Sections (each case's median of CUDA-event-timed runs after warm-up, random data):
  attention  TFLOP/s of the Triton kernel (pointer and TMA variants) vs PyTorch SDPA with the
             cuDNN and flash backends, bf16, head dim 64, N = 1029 / 4101, H = 6 / 12 / 16, B = 1 / 8 / 32
  fused      qkv [B, N, 3D] -> [B, N, D]: Triton qkv+RoPE+attention vs eager split + rope_apply + cuDNN SDPA
  e2e        vitb16 / vitl16 backbone forward at 512x512, B = 1 / 8, bf16: eager (SDPA), torch.compile,
             attn_impl="triton" eager, and attn_impl="triton" under torch.compile
  configs    a few block/warp/stage configurations of the attention and stitch kernels
  stitch     2048x1024 image, 150 classes, crop 512 / stride 341 (18 windows of 32x32 logits):
             the Triton stitch vs the naive pad-and-add canvas (mmseg style) and the reference slice-add
--smoke runs every section's code path at toy sizes on the CPU (tests/test_bench_smoke.py).
Timings are only meaningful on a GPU; the JSON records device, versions and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------
def median_ms(fn, *, warmup: int = 5, reps: int = 30) -> float:
    """Median milliseconds of fn(): CUDA events on a GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    times = []
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
    else:
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _case(fn, flops: float | None, smoke: bool, **timing) -> dict:
    try:
        ms = median_ms(fn, **({"warmup": 1, "reps": 1} if smoke else timing))
    except Exception as exc:  # a backend missing on this card/build is a result, not a crash
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    out = {"ms": round(ms, 5)}
    if flops:
        out["tflops"] = float(f"{flops / ms / 1e9:.4g}")
    return out


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return run


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------
def bench_attention(dev, dtype, smoke: bool) -> list[dict]:
    from torch.nn.attention import SDPBackend

    shapes = [(1, 2, 21, 64)] if smoke else [
        (B, H, N, 64) for N in (1029, 4101) for H in (6, 12, 16) for B in (1, 8, 32)
    ]
    backends = (
        {"sdpa_math": SDPBackend.MATH}
        if smoke
        else {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
    )
    return [_attention_case(B, H, N, hd, dev, dtype, backends, smoke) for B, H, N, hd in shapes]


def _attention_case(B, H, N, hd, dev, dtype, backends, smoke) -> dict:
    from dinov3_deploy.kernels.attention import attention_flops, attention_into

    q, k, v = (torch.randn(B, H, N, hd, device=dev, dtype=dtype) for _ in range(3))
    out = torch.empty_like(q)
    fl = attention_flops(B, H, N, hd)
    row = {"B": B, "H": H, "N": N, "head_dim": hd,
           "triton": _case(lambda: attention_into(q, k, v, out), fl, smoke),
           "triton_tma": _case(lambda: attention_into(q, k, v, out, use_tma=True), fl, smoke)}
    for name, be in backends.items():
        run = _sdpa(be)
        row[name] = _case(lambda run=run: run(q, k, v), fl, smoke)
    return row


def bench_fused(dev, dtype, smoke: bool) -> list[dict]:
    from torch.nn.attention import SDPBackend

    cases = [(1, 2, 4, 64)] if smoke else [(B, H, 32, 64) for H in (12, 16) for B in (1, 8, 32)]
    sdpa = _sdpa(SDPBackend.MATH if smoke else SDPBackend.CUDNN_ATTENTION)
    return [_fused_case(B, H, g, hd, dev, dtype, sdpa, smoke) for B, H, g, hd in cases]


def _fused_case(B, H, g, hd, dev, dtype, sdpa, smoke) -> dict:
    from dinov3_deploy.kernels.attention import attention_flops
    from dinov3_deploy.kernels.fused_attention import rope_attention
    from dinov3_deploy.reference.models.layers.rope import RopePositionEmbedding, rope_apply

    N, D = 5 + g * g, H * hd
    sin, cos = RopePositionEmbedding(hd, device=dev)(g, g)
    qkv = torch.randn(B, N, 3 * D, device=dev, dtype=dtype)

    def split():
        return qkv.reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)

    def eager():
        q, k, v = split()
        q, k = rope_apply(q, sin, cos), rope_apply(k, sin, cos)
        return sdpa(q, k, v).transpose(1, 2).reshape(B, N, D)

    def eager_rope_only():
        q, k, _ = split()
        return rope_apply(q, sin, cos), rope_apply(k, sin, cos)

    fl = attention_flops(B, H, N, hd)
    return {"B": B, "H": H, "N": N, "head_dim": hd,
            "triton_fused": _case(lambda: rope_attention(qkv, sin, cos, H), fl, smoke),
            "eager_rope_sdpa": _case(eager, fl, smoke),
            "eager_rope_only": _case(eager_rope_only, None, smoke)}


def bench_configs(dev, dtype, smoke: bool) -> list[dict]:
    """A few kernel configurations at two attention shapes and the stitch shape, so one run
    shows whether the launch heuristics picked well."""
    from dinov3_deploy.kernels.attention import attention_config, attention_flops, attention_into
    from dinov3_deploy.kernels.stitch import stitch_into, windows_from_geometry

    rows = []
    att_cfgs = [(16, 16, 4, 1)] if smoke else [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3), (128, 128, 8, 2),
                                               (64, 32, 4, 4)]
    for B, H, N, hd in [(1, 2, 21, 64)] if smoke else [(8, 12, 1029, 64), (1, 16, 1029, 64), (1, 16, 4101, 64)]:
        q, k, v = (torch.randn(B, H, N, hd, device=dev, dtype=dtype) for _ in range(3))
        out = torch.empty_like(q)
        fl = attention_flops(B, H, N, hd)
        row = {"kernel": "attention", "B": B, "H": H, "N": N, "heuristic": attention_config(B, H, N, hd, q.device)}
        for bm, bn, w, st in att_cfgs:
            cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
            run = lambda cfg=cfg, q=q, k=k, v=v, out=out: attention_into(q, k, v, out, config=cfg)
            row[f"m{bm}_n{bn}_w{w}_s{st}"] = _case(run, fl, smoke)
        rows.append(row)
    H, W, C, crop, stride, low = (12, 20, 4, 10, 6, 3) if smoke else (1024, 2048, 150, 512, 341, 32)
    logits = torch.randn(len(windows_from_geometry(H, W, crop, stride)), C, low, low, device=dev)
    labels = torch.empty((H, W), dtype=torch.int64, device=dev)
    row = {"kernel": "stitch", "H": H, "W": W, "classes": C}
    for bp, bc, w in [(32, 4, 4)] if smoke else [(128, 8, 4), (128, 16, 4), (128, 16, 8), (64, 16, 4), (256, 8, 8)]:
        cfg = dict(BLOCK_P=bp, BLOCK_C=bc, num_warps=w)
        row[f"p{bp}_c{bc}_w{w}"] = _case(lambda cfg=cfg: stitch_into(logits, (H, W), crop, stride, labels, config=cfg),
                                         None, smoke)
    rows.append(row)
    return rows


def bench_e2e(dev, dtype, smoke: bool, deadline: float, rows: list[dict], save=lambda: None) -> list[dict]:
    """Appends to `rows` as it goes and calls save() after every case: a run cut short by the
    GPU script's timeout still leaves what it measured."""
    from dinov3_deploy.reference.factory import create_backbone

    cases = [("vit_tiny_test", 1, 32)] if smoke else [(m, B, 512) for m in ("vitb16", "vitl16") for B in (1, 8)]
    variants = ["eager", "triton"] if smoke else ["eager", "compile", "triton", "triton_compile"]
    for name, B, size in cases:
        base = create_backbone(name, device=dev).to(dtype)
        x = torch.randn(B, 3, size, size, device=dev, dtype=dtype)
        row = {"model": name, "B": B, "size": size}
        rows.append(row)
        for var in variants:
            if time.time() > deadline:
                row[var] = {"error": "skipped: time budget of the run spent"}
                continue
            model = create_backbone(name, device=dev, attn_impl="triton" if "triton" in var else "sdpa").to(dtype)
            model.load_state_dict(base.state_dict())
            fn = torch.compile(model.forward_features) if "compile" in var else model.forward_features
            with torch.no_grad():
                row[var] = _case(lambda fn=fn, x=x: fn(x), None, smoke, warmup=3, reps=20)
            del model, fn
            save()
        if not smoke:
            torch._dynamo.reset()
    return rows


def naive_pad_and_add(logits, H, W, windows, n_classes):
    """The mmseg-style path: each window's upsampled logits padded to a full-size canvas and added."""
    canvas = logits.new_zeros((1, n_classes, H, W), dtype=torch.float32)
    count = logits.new_zeros((1, 1, H, W), dtype=torch.float32)
    for k, (y0, y1, x0, x1) in enumerate(windows):
        up = F.interpolate(logits[k : k + 1].float(), size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
        canvas += F.pad(up, (x0, W - x1, y0, H - y1))
        count += F.pad(torch.ones_like(up[:, :1]), (x0, W - x1, y0, H - y1))
    return (canvas / count).argmax(1)


def slice_add(logits, H, W, windows, n_classes):
    """reference/sliding_window.py's accumulation (slice-add into one canvas), then argmax."""
    canvas = logits.new_zeros((1, n_classes, H, W), dtype=torch.float32)
    count = logits.new_zeros((1, 1, H, W), dtype=torch.float32)
    up = F.interpolate(logits.float(), size=(windows[0][1] - windows[0][0], windows[0][3] - windows[0][2]),
                       mode="bilinear", align_corners=False)
    for k, (y0, y1, x0, x1) in enumerate(windows):
        canvas[..., y0:y1, x0:x1] += up[k : k + 1]
        count[..., y0:y1, x0:x1] += 1
    return (canvas / count).argmax(1)


def bench_stitch(dev, smoke: bool) -> list[dict]:
    from dinov3_deploy.kernels.stitch import stitch_into, windows_from_geometry

    H, W, C, crop, stride, low = (12, 20, 4, 10, 6, 3) if smoke else (1024, 2048, 150, 512, 341, 32)
    windows = windows_from_geometry(H, W, crop, stride)
    logits = torch.randn(len(windows), C, low, low, device=dev)
    labels = torch.empty((H, W), dtype=torch.int64, device=dev)
    probs = torch.empty((C, H, W), device=dev)
    row = {"H": H, "W": W, "classes": C, "windows": len(windows),
           "triton_labels": _case(lambda: stitch_into(logits, (H, W), crop, stride, labels), None, smoke),
           "triton_labels_probs": _case(lambda: stitch_into(logits, (H, W), crop, stride, labels, probs), None, smoke),
           "naive_pad_add": _case(lambda: naive_pad_and_add(logits, H, W, windows, C), None, smoke, warmup=2, reps=10),
           "reference_slice_add": _case(lambda: slice_add(logits, H, W, windows, C), None, smoke, warmup=2, reps=10)}
    stitch_into(logits, (H, W), crop, stride, labels)
    row["labels_agree_with_naive"] = float((labels == naive_pad_and_add(logits, H, W, windows, C)[0]).float().mean())
    return [row]


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def environment() -> dict:
    import triton

    env = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
           "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
           "host": platform.node()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(device=p.name, sm_count=p.multi_processor_count, capability=f"{p.major}.{p.minor}",
                   cudnn=torch.backends.cudnn.version())
    else:
        env.update(device="cpu (Triton interpreter)" if os.environ.get("TRITON_INTERPRET") == "1" else "cpu")
    return env


def _ms(cell) -> str:
    return f"{cell['ms']:.3f}" if isinstance(cell, dict) and "ms" in cell else "-"


def _tf(cell) -> str:
    return f"{cell['tflops']:.0f}" if isinstance(cell, dict) and "tflops" in cell else "-"


def summary(res: dict) -> str:
    lines = [f"device: {res['env']['device']}  torch {res['env']['torch']}  triton {res['env']['triton']}"]
    for r in res.get("attention", []):
        ref = r.get("cudnn", r.get("sdpa_math"))
        lines.append(f"attn B={r['B']:>2} H={r['H']:>2} N={r['N']}: triton {_tf(r['triton'])} / tma "
                     f"{_tf(r['triton_tma'])} / cudnn {_tf(ref)} / flash {_tf(r.get('flash'))} TFLOP/s")
    for r in res.get("fused", []):
        lines.append(f"fused B={r['B']:>2} H={r['H']:>2} N={r['N']}: triton {_ms(r['triton_fused'])} ms vs eager "
                     f"rope+sdpa {_ms(r['eager_rope_sdpa'])} ms (rope alone {_ms(r['eager_rope_only'])})")
    for r in res.get("configs", []):
        cells = {k: v for k, v in r.items() if isinstance(v, dict) and "ms" in v}
        best = min(cells, key=lambda k: cells[k]["ms"]) if cells else "-"
        shape = f"B={r['B']} H={r['H']} N={r['N']}" if r["kernel"] == "attention" else f"{r['W']}x{r['H']}"
        timings = " ".join(f"{k}={_ms(v)}" for k, v in cells.items())
        lines.append(f"config {r['kernel']} {shape}: best {best} {timings}")
    for r in res.get("e2e", []):
        cells = " ".join(f"{k} {_ms(r[k])}" for k in ("eager", "compile", "triton", "triton_compile") if k in r)
        lines.append(f"e2e {r['model']} B={r['B']}: {cells} ms")
    for r in res.get("stitch", []):
        lines.append(f"stitch {r['W']}x{r['H']} C={r['classes']}: triton {_ms(r['triton_labels'])} ms "
                     f"(+probs {_ms(r['triton_labels_probs'])}) vs naive {_ms(r['naive_pad_add'])} ms, "
                     f"slice-add {_ms(r['reference_slice_add'])} ms, agree {r['labels_agree_with_naive']:.5f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--smoke", action="store_true", help="toy sizes; runs on the CPU through the Triton interpreter")
    ap.add_argument("--sections", default="attention,fused,stitch,configs,e2e")
    ap.add_argument("--budget-s", type=float, default=330.0, help="stop starting e2e cases after this many seconds")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        if not args.smoke:
            print("no CUDA device: only --smoke runs here", file=sys.stderr)
            return 2
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels import triton
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    start = time.time()
    res: dict = {"env": environment(), "smoke": args.smoke, "dtype": str(dtype).removeprefix("torch.")}
    sections = args.sections.split(",")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        res["wall_s"] = round(time.time() - start, 1)
        args.out.write_text(json.dumps(res, indent=1))

    with torch.no_grad():
        for name, run in [
            ("attention", lambda: bench_attention(dev, dtype, args.smoke)),
            ("fused", lambda: bench_fused(dev, dtype, args.smoke)),
            ("stitch", lambda: bench_stitch(dev, args.smoke)),
            ("configs", lambda: bench_configs(dev, dtype, args.smoke)),
            ("e2e", lambda: bench_e2e(dev, dtype, args.smoke, start + args.budget_s, res.setdefault("e2e", []), save)),
        ]:
            if name in sections:
                res[name] = run()
                save()
    print(summary(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

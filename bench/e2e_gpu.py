"""GPU end-to-end check (bench/gpu_check.sh): vitb16 seg, bf16, one 2048x1024 image.

    python -m dinov3_deploy.bench.e2e_gpu --out bench/results/e2e_gpu.json
    python -m dinov3_deploy.bench.e2e_gpu --smoke --out /tmp/e2e.json   # CPU: tiny model, interpreter

Rows through `infer`'s path (bench/e2e.py), same artifact and file, in this order (the most
telling first, so a step cut short by its time limit still has them):
  infer path      the torch backend: Triton attention, CUDA graph per window shape, Triton stitch kernel
  compile+stitch  the honest competitor: torch.compile (mode reduce-overhead: Inductor's CUDA graphs,
                  SDPA attention) and the plain-PyTorch stitch on the device (the reference stitch)
  infer+compile   ours under torch.compile (default mode) inside our CUDA graph, Triton stitch
  reference path  the torch backend eager with SDPA attention, the reference stitch on the host
each with images/s, ms/image and the stitch's share of the window work. The report is rewritten
after every row.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

COMBOS = {
    "infer": ("infer path", ("torch", "triton", {"attn_impl": "triton", "cuda_graphs": True})),
    "compile-stitch": ("torch.compile + device stitch",
                       ("torch", "torch", {"attn_impl": "sdpa", "compile_mode": "reduce-overhead"})),
    "infer-compile": ("infer path + compile",
                      ("torch", "triton", {"attn_impl": "triton", "compile_mode": "default", "cuda_graphs": True})),
    "reference": ("reference path", ("torch", "torch-cpu", {"attn_impl": "sdpa", "cuda_graphs": False})),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--combos", default=",".join(COMBOS), help=f"comma-separated, from {', '.join(COMBOS)}")
    ap.add_argument("--smoke", action="store_true", help="CPU: vit_tiny_test fp32, a 64x128 image, no compile")
    args = ap.parse_args(argv)
    names = [c for c in args.combos.split(",") if c]
    if unknown := [c for c in names if c not in COMBOS]:
        ap.error(f"unknown combos {unknown}")
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

    from click.testing import CliRunner

    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.bench.e2e import e2e_rows, synthetic_images
    from dinov3_deploy.bench.machine import machine_info
    from dinov3_deploy.bench.report import markdown, write_report
    from dinov3_deploy.cli import cli
    from dinov3_deploy.runtime.inference import list_images
    from dinov3_deploy.verification.parity import THRESHOLDS

    model, precision, (h, w), window = ("vit_tiny_test", "fp32", (64, 128), 32) if args.smoke else \
        ("vitb16", "bf16", (1024, 2048), 512)
    work = Path(tempfile.mkdtemp(prefix="e2e_gpu_"))
    heights = f"{window}:{window}:{2 * window}"
    res = CliRunner().invoke(cli, ["export", "--task", "seg", "--model", model, "--precision", precision,
                                   "--format", "onnx", "--batch", "1:4:8", "--height", heights, "--width", heights,
                                   "--no-verify", "--out", str(work / "art")])
    if res.exit_code != 0:
        print(res.output, res.exception, file=sys.stderr)
        return 1
    art = load_artifact(work / "art")
    synthetic_images(work / "imgs", 1, h, w)
    images = list_images([work / "imgs"])
    report = {
        "config": {"title": f"{model} seg {precision} end-to-end, one {w}x{h} image", "task": "seg", "mode": "e2e",
                   "images": 1, "window": window, "batch_windows": 4, "warmup": 1, "iters": args.iters,
                   "smoke": args.smoke, "combos": names},
        "machine": machine_info(),
        "reference": "the torch fp32 backend (SDPA) with the reference stitch, same file: label agreement",
        "thresholds": {precision: vars(THRESHOLDS[precision])},
        "rows": [],
    }
    for name in names:
        label, (backend, stitch, options) = COMBOS[name]
        if args.smoke:
            options = {k: v for k, v in options.items() if k != "compile_mode"}
            options["cuda_graphs"] = False
        (row,) = e2e_rows(art, images, [(backend, stitch, options)], window=window, batch_windows=4, warmup=1,
                          iters=args.iters, log=print)
        row["target"] = f"{label}: {row['target']}"
        row["combo"] = name
        report["rows"].append(row)
        write_report(report, Path(args.out), png=False)
        print(f"{row['target']}: {row.get('images_per_s')} images/s, stitch share {row.get('stitch_share')}, "
              f"status {row['status']} {row.get('reason', '')}", flush=True)
    print(markdown({"schema": "", **report}))
    return 0 if all(r["status"] == "ok" for r in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())

"""GPU end-to-end check (bench/gpu_check.sh): vitb16 seg, bf16, one 2048x1024 image.

    python -m dinov3_deploy.bench.e2e_gpu --out bench/results/e2e_gpu.json

Two rows through `infer`'s path (bench/e2e.py), same artifact and file:
  infer path      the torch backend: Triton attention, CUDA graph per window shape, Triton stitch kernel
  reference path  the torch backend eager with SDPA attention, the reference stitch on the host
each with images/s, ms/image and the stitch's share of the window work.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args(argv)

    from click.testing import CliRunner

    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.bench.e2e import e2e_rows, synthetic_images
    from dinov3_deploy.bench.machine import machine_info
    from dinov3_deploy.bench.report import markdown, write_report
    from dinov3_deploy.cli import cli
    from dinov3_deploy.runtime.inference import list_images
    from dinov3_deploy.verification.parity import THRESHOLDS

    work = Path(tempfile.mkdtemp(prefix="e2e_gpu_"))
    res = CliRunner().invoke(cli, ["export", "--task", "seg", "--model", "vitb16", "--precision", "bf16",
                                   "--format", "onnx", "--batch", "1:4:8", "--height", "512:512:1024",
                                   "--no-verify", "--out", str(work / "art")])
    if res.exit_code != 0:
        print(res.output, file=sys.stderr)
        return 1
    art = load_artifact(work / "art")
    synthetic_images(work / "imgs", 1, 1024, 2048)
    images = list_images([work / "imgs"])
    combos = [("torch", "triton", {"attn_impl": "triton", "cuda_graphs": True}),
              ("torch", "torch-cpu", {"attn_impl": "sdpa", "cuda_graphs": False})]
    rows = e2e_rows(art, images, combos, window=512, batch_windows=4, warmup=1, iters=args.iters, log=print)
    for r, label in zip(rows, ("infer path", "reference path")):
        r["target"] = f"{label}: {r['target']}"
    report = {
        "config": {"title": "vitb16 seg bf16 end-to-end, one 2048x1024 image", "task": "seg", "mode": "e2e",
                   "images": 1, "window": 512, "batch_windows": 4, "warmup": 1, "iters": args.iters},
        "machine": machine_info(),
        "reference": "the torch fp32 backend (SDPA) with the reference stitch, same file: label agreement",
        "thresholds": {"bf16": vars(THRESHOLDS["bf16"])},
        "rows": rows,
    }
    write_report(report, Path(args.out), png=False)
    print(markdown({"schema": "", **report}))
    for r in rows:
        print(f"{r['target']}: {r.get('images_per_s')} images/s, stitch share {r.get('stitch_share')}, "
              f"status {r['status']} {r.get('reason', '')}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

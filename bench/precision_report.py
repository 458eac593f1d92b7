"""Before/after precision report on the "outliers" stress weights: what a plain low-precision cast
does to a model with trained-like numerics, and what the exact folds and the fp32 islands recover.

    python -m bench.precision_report                      # vit_tiny_test, 64x64 (seconds)
    python -m bench.precision_report --model vits16       # the real size, 224x224

For fp16 and bf16, three graphs, each against the fp32 reference on the verifier's synthetic images:
  naive            the unfolded model with every op in the precision (DeployModule with no folds and
                   no islands: a `model.half()` with LayerNorm statistics and softmax kept fp32)
  folded           after fold_all (LayerScale / ConvNeXt gamma / head BatchNorm)
  folded+islands   and the fp32 islands export's calibration picks (fp16 only: bf16 has fp32's
                   exponent range, so it gets none and equals `folded`)
Each row: rel Frobenius error, min token cosine and label agreement of the seg logits (the verifier's
metric, parity.judge_labels: flips beyond the measured error's margin count, near-tie flips are shown
apart), whether the output is finite, and the share of matmul FLOPs left in fp32.

The low-precision graphs run in PyTorch on the CPU, where every op's output really is fp16 / bf16.
ONNX Runtime's CPU provider would hide the overflow: it runs most fp16 nodes through inserted fp32
casts, so an fp16 graph that gives inf on a GPU can look fine there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dinov3_deploy.atomic import write_text
from dinov3_deploy.bench.machine import machine_info
from dinov3_deploy.deploy_module import DeployModule, island_args
from dinov3_deploy.export.calibration import (
    Island,
    calibration_images,
    choose_islands,
    fp32_flop_share,
    matmul_flops,
    record_maxima,
)
from dinov3_deploy.model_source import ModelSource
from dinov3_deploy.reference.models.fold import fold_all
from dinov3_deploy.reference.protocol.synthetic import make_sample
from dinov3_deploy.reference.training.transforms import normalize
from dinov3_deploy.verification.parity import THRESHOLDS, compare

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SIZE = {"vit_tiny_test": 64, "vit_tiny_swiglu_test": 64, "convnext_tiny_test": 64}


def _images(size: int, n: int) -> torch.Tensor:
    """The verifier's synthetic images (seeds 0..n-1; calibration uses others), normalised."""
    return torch.stack([normalize(make_sample(i, size, size)[0]) for i in range(n)])


@torch.no_grad()
def _logits(module: DeployModule, x: torch.Tensor) -> np.ndarray:
    return torch.cat([module(x[i:i + 1])[0] for i in range(len(x))]).float().numpy()


def _row(variant: str, precision: str, ref: np.ndarray, out: np.ndarray, share: float, islands: list[str],
         seconds: float) -> dict:
    (p,) = compare({"logits": ref}, {"logits": out}, variant, "seg", precision)
    return {"variant": variant, "precision": precision, "finite": bool(np.isfinite(out).all()),
            "rel_fro": p.rel_fro, "min_token_cos": p.min_token_cos, "label_agreement": p.label_agreement,
            "labels": p.labels,
            "passed": p.passed, "fp32_flop_share": share, "fp32_islands": islands, "seconds": round(seconds, 1)}


def run(model_name: str | None, init: str, size: int, n_images: int, head: str | None = None) -> dict:
    torch.manual_seed(0)
    source = ModelSource.resolve("seg", model_name, head=head, init=init)
    model = source.build()
    model_name, init = source.backbone, source.init
    x = _images(size, n_images)
    ref = _logits(DeployModule(model, "fp32"), x)
    folded, folds = fold_all(model)
    flops = matmul_flops(folded, x[:1])
    t = time.perf_counter()
    ranges = record_maxima(folded, calibration_images(None, size, size, model.spec.mean, model.spec.std))
    calib_s = time.perf_counter() - t
    rows = []
    for precision in ("fp16", "bf16"):
        islands = choose_islands(folded, ranges, precision)
        variants = [("naive", model, []), ("folded", folded, []), ("folded+islands", folded, islands)]
        if precision == "bf16" and model.backbone.cfg.family == "vit":
            # what export writes for bf16 ViTs: fp32 residual stream and patch embedding (export/pipeline.py)
            variants.append(("exported", folded, islands + [Island("backbone.patch_embed", "precision"),
                                                            Island("backbone.blocks", "residual")]))
        for variant, task_model, isl in variants:
            t = time.perf_counter()
            out = _logits(DeployModule(task_model, precision, **island_args(isl)), x)
            rows.append(_row(variant, precision, ref, out, fp32_flop_share(flops, isl),
                             [f"{i.module} ({i.reason})" for i in isl], time.perf_counter() - t))
            print(_fmt(rows[-1]), flush=True)
    return {
        "model": model_name, "init": init, "task": "seg", "input": f"{n_images} x 3 x {size} x {size}",
        "head": "random (release-like)" if head is None else _trained_head(head),
        "folds": len(folds), "calibration_seconds": round(calib_s, 1),
        "max_stream": max(ranges.stream.values()), "max_linear_output": max(
            v for n, v in ranges.outputs.items() if n in flops),
        "thresholds": {k: vars(v) for k, v in THRESHOLDS.items() if k != "fp32"}, "rows": rows,
    }


def _trained_head(head: str) -> dict:
    """What the report needs to say about a trained head: where from, and how well it does."""
    from dinov3_deploy.reference.head_checkpoint import read_head_config

    extra = read_head_config(head).get("extra", {})
    return {"path": str(head), "dataset": extra.get("dataset"), "mIoU": extra.get("mIoU"),
            "iters": extra.get("train", {}).get("iters")}


def _fmt(r: dict) -> str:
    def num(v, f):
        return "nan" if v is None or not np.isfinite(v) else format(v, f)

    labels = num(100 * r["label_agreement"], ".2f") if r["label_agreement"] is not None else "-"
    if (r.get("labels") or {}).get("near_tie_flips"):
        labels += f" ({r['labels']['near_tie_flips']} near-tie px)"
    return (f"| {r['precision']} | {r['variant']} | {'yes' if r['finite'] else 'no'} | {num(r['rel_fro'], '.2e')} | "
            f"{num(r['min_token_cos'], '.5f')} | {labels} | {100 * r['fp32_flop_share']:.1f} | "
            f"{'pass' if r['passed'] else 'FAIL'} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="backbone (default vit_tiny_test, or the --head's)")
    ap.add_argument("--init", default="outliers", choices=["outliers", "release-like"])
    ap.add_argument("--head", default=None,
                    help="a seg head checkpoint (`dinov3-deploy train --task seg [--random-init outliers]`) instead "
                         "of a random head: labels with a trained head's margins; its backbone and init are used")
    ap.add_argument("--size", type=int, default=None, help="square input side (default 64 tiny, 224 otherwise)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/precision-<model>[-<init>].json")
    args = ap.parse_args(argv)
    if args.head is None:
        args.model = args.model or "vit_tiny_test"
    else:
        from dinov3_deploy.reference.head_checkpoint import read_head_spec

        args.model = read_head_spec(args.head).backbone
    size = args.size or DEFAULT_SIZE.get(args.model, 224)
    t = time.perf_counter()
    print("| precision | graph | finite | rel Frobenius | min token cos | labels % | fp32 FLOPs % | fp16/bf16 bounds |")
    print("|---|---|---|---|---|---|---|---|")
    report = run(args.model, args.init if args.head is None else "release-like", size, args.images, args.head)
    report["machine"] = machine_info()
    report["total_seconds"] = round(time.perf_counter() - t, 1)
    suffix = "" if report["init"] == "outliers" else f"-{report['init']}"
    suffix += "" if args.head is None else "-trained-head"
    out = args.out or RESULTS / f"precision-{args.model}{suffix}.json"
    write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"{report['total_seconds']} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The C++ runtime against `dinov3-deploy infer` on the CPU: the same artifact, the same folder of
images, both through ONNX Runtime, images/s side by side in one run (not asserted anywhere).

Each command runs as a user runs it (a fresh process per run), `--repeat` times. Two figures per
runtime: end to end (process start, model load, every image, files written: the wall clock) and
steady state (the images/s each CLI reports in predictions.json, timed from its first image).
The labels of the two runtimes are compared too (they must be identical).

    engines/cpp/install-deps.sh && cmake -S engines/cpp -B build/cpp && cmake --build build/cpp
    python -m bench.cpp_bench [--artifact DIR] [--images 8] [--size 240x320] [--repeat 3]

Writes bench/results/cpu-cpp-vs-infer-<model>.json (the bench/report.py envelope)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _images(folder: Path, n: int, h: int, w: int) -> None:
    from PIL import Image

    from dinov3_deploy.reference.protocol.synthetic import make_sample

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(make_sample(2000 + i, h, w)[0]).save(folder / f"img_{i:03d}.png")


def _cli() -> str:
    """The dinov3-deploy console script of this Python (a user's command, in a fresh process)."""
    return str(Path(sys.executable).with_name("dinov3-deploy"))


def _export(out: Path, model: str) -> Path:
    subprocess.run([_cli(), "export", "--task", "seg", "--model", model,
                    "--no-verify", "--out", str(out)], check=True, capture_output=True)
    return out


def _time_runs(cmd: list[str], out: Path, repeat: int) -> dict:
    walls, rates = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        r = subprocess.run([*cmd, "-o", str(out), "--overwrite"], capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[:2])} failed: {r.stderr[-2000:]}")
        rates.append(json.loads((out / "predictions.json").read_text())["summary"]["images_per_second"])
    return {"walls": walls, "rates": rates}


def _row(target: str, shape: str, runs: dict, n: int, parity: dict) -> dict:
    per_image = sorted(1000 * w / n for w in runs["walls"])
    return {"target": target, "shape": shape, "status": "ok", "median_ms": statistics.median(per_image),
            "p10_ms": per_image[0], "p90_ms": per_image[-1], "min_ms": per_image[0], "iters": len(per_image),
            "clock": "wall clock per image, whole process (start, load, images, files)",
            "images_per_second_end_to_end": n / statistics.median(runs["walls"]),
            "images_per_second_steady": statistics.median(runs["rates"]), "parity": parity}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, help="a seg artifact (default: export vit_tiny_test's here)")
    ap.add_argument("--model", default="vit_tiny_test", help="model to export when --artifact is not given")
    ap.add_argument("--build", type=Path, default=ROOT / "build" / "cpp", help="the cmake build folder")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", default="240x320", help="HxW of the synthetic images")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, help="result JSON (default: bench/results/cpu-cpp-vs-infer-<model>.json)")
    args = ap.parse_args(argv)
    binary = args.build / "dinov3-deploy-cpp"
    if not binary.exists():
        raise SystemExit(f"{binary} is missing: engines/cpp/install-deps.sh, then cmake -S engines/cpp -B "
                         f"{args.build} && cmake --build {args.build}")
    h, w = map(int, args.size.lower().split("x"))
    from PIL import Image

    from bench.machine import machine_info
    from bench.report import SCHEMA, validate
    from dinov3_deploy.atomic import write_text

    with tempfile.TemporaryDirectory(prefix="cpp_bench_") as tmp:
        tmp = Path(tmp)
        art = args.artifact or _export(tmp / "art", args.model)
        _images(tmp / "images", args.images, h, w)
        py = _time_runs([_cli(), "infer", str(art), str(tmp / "images"),
                         "--backend", "onnxruntime"], tmp / "py", args.repeat)
        cpp = _time_runs([str(binary), str(art), str(tmp / "images")], tmp / "cpp", args.repeat)
        equal = [float(np.mean(np.asarray(Image.open(f)) == np.asarray(Image.open(tmp / "cpp" / f.name))))
                 for f in sorted((tmp / "py").glob("*_labels.png"))]
        manifest = json.loads((Path(art) / "manifest.json").read_text())
    shape = f"{args.images} images {h}x{w}"
    parity = {"labels_equal_fraction": min(equal), "passed": min(equal) == 1.0}
    rows = [_row("infer (Python, onnxruntime-cpu)", shape, py, args.images, parity),
            _row("dinov3-deploy-cpp (onnxruntime-cpu)", shape, cpp, args.images, parity)]
    report = validate({
        "schema": SCHEMA, "kind": "model", "machine": machine_info(),
        "config": {"artifact": manifest["backbone"]["name"] + " " + manifest["task"] + " " + manifest["precision"],
                   "images": args.images, "size": [h, w], "repeat": args.repeat, "window": "artifact opt size"},
        "rows": rows,
        "speedup_cpp_over_python": {
            "end_to_end": rows[1]["images_per_second_end_to_end"] / rows[0]["images_per_second_end_to_end"],
            "steady": rows[1]["images_per_second_steady"] / rows[0]["images_per_second_steady"]},
    })
    out = args.out or ROOT / "bench" / "results" / f"cpu-cpp-vs-infer-{args.model}.json"
    write_text(out, json.dumps(report, indent=2) + "\n")
    for r in rows:
        print(f"{r['target']:40s} {r['images_per_second_end_to_end']:7.2f} images/s end to end, "
              f"{r['images_per_second_steady']:7.2f} images/s steady")
    print(f"labels equal: {min(equal):.2%} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

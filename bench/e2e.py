"""End-to-end throughput: images per second from files to labels, per backend and stitch.

The model bench times one forward on a ready batch; users wait for more: decoding, resizing, the
sliding window's many forwards, the stitch and the copy back. One row here is one pass over the
image files through exactly `infer`'s path (runtime/prefetch.py `image_stream` + runtime/prediction.py `predict_image`),
without writing the outputs, timed with the harness's `timed_row` so the report keeps the one
envelope. Parity: each row's labels against the reference path (the fp32 torch backend, reference
stitch) on the same files, as label agreement.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .harness import timed_row
from .timing import measure


def e2e_rows(artifact, images: list, combos: list[tuple], *, window: int | None = None,
             stride: int | None = None, batch_windows: int | None = None, warmup: int = 1, iters: int = 3,
             log: Callable[[str], None] = lambda msg: None, unreadable: list | None = None) -> list[dict]:
    """One row per (backend, stitch[, Predictor options]): a pass over `images` (runtime.discovery.ImageInput)
    timed `iters` times after `warmup`; images_per_s = images / median pass time; stitch_share = the part of
    one image's window work spent stitching. An image that cannot be read is appended to `unreadable`
    ({"image", "reason"}) and left out of every pass, as infer reports it and goes on."""
    import torch

    from dinov3_deploy.runtime.batch import failure_reason
    from dinov3_deploy.runtime.prediction import predict_image, resolve_stitch
    from dinov3_deploy.runtime.predictor import Predictor
    from dinov3_deploy.runtime.prefetch import image_stream
    from dinov3_deploy.verification.parity import THRESHOLDS

    failed = unreadable if unreadable is not None else []

    def run_all(predictor, stitch: str) -> dict[str, np.ndarray]:
        out = {}
        for item, image, device_image in image_stream(images, predictor.device):
            if isinstance(image, Exception):
                failed.append({"image": item.name, "reason": failure_reason(image)})
                continue
            pred = predict_image(predictor, item.name, image, crop=window, stride=stride,
                                 batch_windows=batch_windows, stitch=stitch, device_image=device_image)
            out[item.name] = pred.labels
        return out

    log("reference: torch fp32, reference stitch")
    ref_predictor = Predictor(artifact, "torch", precision="fp32", attn_impl="sdpa", cuda_graphs=False)
    reference = run_all(ref_predictor, "torch")
    ref_predictor.close()
    images = [i for i in images if i.name in reference]  # the unreadable ones are reported once, by the caller
    if not images:
        from dinov3_deploy.errors import DeployError

        raise DeployError("--e2e: no image could be read: " + "; ".join(f"{f['image']}: {f['reason']}"
                                                                       for f in failed))

    min_agree = THRESHOLDS[artifact.precision].min_label_agreement

    def check(labels: dict[str, np.ndarray]) -> list:
        return label_rows(reference, labels, min_agree)

    rows = []
    n_pixels = sum(int(np.prod(v.shape)) for v in reference.values())
    for combo in combos:
        backend, stitch, options = (*combo, {})[:3]
        base = {"target": f"e2e {backend} + stitch {stitch}", "shape": f"{len(images)} images",
                "batch": len(images), "images": len(images), "pixels": n_pixels, "backend": backend,
                "stitch": stitch, "window": window, "stride": stride, "batch_windows": batch_windows, **options}
        try:
            predictor = Predictor(artifact, backend, **options)
            base["precision"] = artifact.precision if predictor.kind != "torch" else predictor._impl.precision
            compiled = f" compile {options['compile_mode']}" if options.get("compile_mode") else ""
            stitch_used = resolve_stitch(stitch, predictor.device, artifact.manifest)
            base["target"] = f"e2e {predictor.name}{compiled} + stitch {stitch_used}"
            base["stitch_used"] = stitch_used
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
            rows.append({**base, "status": "skipped", "reason": f"{exc}"[:400]})
            continue
        log(base["target"])
        before = predictor.windows
        cuda = predictor.device.type == "cuda"
        row = timed_row(base, functools.partial(run_all, predictor, stitch_used),
                        functools.partial(measure, warmup=warmup, iters=iters, cuda=False), check=check,
                        cuda=cuda, track_memory=cuda and torch.cuda.is_available())
        passes = 1 + warmup + iters
        row["windows_per_pass"] = (predictor.windows - before) // passes if "median_ms" in row else None
        if "median_ms" in row:
            row["images_per_s"] = round(len(images) / (row["median_ms"] / 1e3), 3)
            row["ms_per_image"] = round(row["median_ms"] / len(images), 2)
        if "median_ms" in row:
            row["stitch_share"] = stitch_share(predictor, images[0], stitch_used, window, stride, batch_windows,
                                               repeats=iters)
        predictor.close()
        rows.append(row)
    return rows


def label_rows(reference: dict[str, np.ndarray], labels: dict[str, np.ndarray], min_agree: float) -> list:
    """One parity row per image: its labels against the reference path's, as label agreement."""
    from dinov3_deploy.verification.parity import OutputParity, label_agreement

    rows = []
    for name, ref in reference.items():
        agree = label_agreement(ref, labels[name])
        ok = agree >= min_agree
        rows.append(OutputParity("labels", name, list(ref.shape), label_agreement=agree, passed=ok,
                                 failures=[] if ok else [f"label_agreement {agree:.4%} < {min_agree:.2%}"]))
    return rows


def stitch_share(predictor, item, stitch: str, window, stride, batch_windows, repeats: int = 3) -> float:
    """Fraction of one image's window work (forwards + stitch, median of `repeats`) spent stitching
    (a Mask2Former artifact: its first view's windows and stitch, m2f_prediction.stitch_seconds)."""
    from dinov3_deploy.reference.protocol.images import read_rgb
    from dinov3_deploy.runtime.m2f_prediction import is_m2f_artifact, stitch_seconds
    from dinov3_deploy.runtime.prediction import batch_windows_of, window_size

    shapes = predictor.artifact.shapes()
    size, per_call = window_size(shapes, window), batch_windows_of(shapes, batch_windows)
    image = read_rgb(item.source) if isinstance(item.source, Path) else item.source
    split = stitch_seconds if is_m2f_artifact(predictor.artifact.manifest) else linear_stitch_seconds
    shares = []
    for _ in range(repeats):
        forwards, stitching = split(predictor, image, size, stride, per_call, stitch)
        shares.append(stitching / (forwards + stitching))
    return round(float(np.median(shares)), 4)


def linear_stitch_seconds(predictor, image: np.ndarray, size: int, stride, batch_windows: int,
                          stitch: str) -> tuple[float, float]:
    """(seconds of the window forwards, seconds of the stitch) of one image through a linear-head artifact."""
    import time

    import torch

    from dinov3_deploy.reference.protocol.sliding_window import window_geometry
    from dinov3_deploy.runtime.prediction import resize_short_side, stitch_labels, window_logits

    shapes = predictor.artifact.shapes()
    pixels = torch.from_numpy(np.array(image)).to(predictor.device).permute(2, 0, 1)[None].float()
    scaled = resize_short_side(pixels, size)
    g = window_geometry(scaled.shape[-2], scaled.shape[-1], size, stride or max(shapes.multiple, size * 2 // 3))
    sync = torch.cuda.synchronize if predictor.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    logits = window_logits(predictor, scaled, g, batch_windows)
    sync()
    t1 = time.perf_counter()
    stitch_labels(logits, scaled, g, tuple(image.shape[:2]), stitch).cpu()
    return t1 - t0, time.perf_counter() - t1


def synthetic_images(folder: Path, n: int, height: int, width: int) -> None:
    """n synthetic street-like PNGs (reference/protocol/synthetic.py) to time a pass on."""
    from PIL import Image

    from dinov3_deploy.reference.protocol.synthetic import make_sample

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(make_sample(100 + i, height, width)[0]).save(folder / f"synthetic_{i}.png")

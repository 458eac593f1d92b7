"""One image through a Mask2Former artifact with the release's protocol (reference/protocol/m2f.py):
views resized from the uint8 image as the reference evaluation resizes them, the sliding window over
each view (and its mirror with TTA), the per-window semantic scores summed per window on the
predictor's device (by default accumulated from the class and mask logits in chunks, m2f_stitch.py;
`--stitch torch`: the graph's own scores output through the reference slide_inference), probabilities
averaged over the views, argmax.

The views and the view arithmetic are the reference's own functions (training/m2f_eval.m2f_views,
protocol/m2f.tta_short_sides, sliding_window.slide_inference), fed the artifact's scores: so the
labels are those of `eval` on the same images up to the graph's numeric error.

A view is two steps, kept apart so `bench --e2e` can time each: `window_batches` runs the windows
through the predictor (a batch of window outputs at a time), `stitch_view` turns them into the view's
scores at the image size."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dinov3_deploy.errors import DeployError

M2F_STRIDE_RATIO = 596 / 896  # the release's stride for its 896 crop


def is_m2f_artifact(manifest) -> bool:
    return manifest.head is not None and manifest.head.head_type == "m2f"


def m2f_stride(window: int, stride: int | None) -> int:
    """The stride: requested (clamped to the window), else the release's ratio 596/896 of the window."""
    return min(stride, window) if stride else max(1, round(window * M2F_STRIDE_RATIO))


def resolve_m2f_stitch(stitch: str) -> str:
    """--stitch for a Mask2Former artifact: auto and chunked accumulate from the class and mask logits
    (m2f_stitch.py); torch sums the graph's scores with the reference slide_inference; the linear head's
    Triton stitch does not apply (it upsamples logits, M2F sums sigmoid-ed mask products)."""
    from .stitches import STITCHES

    if stitch not in STITCHES:
        raise DeployError(f"--stitch must be one of {', '.join(STITCHES)}, got '{stitch}'")
    if stitch == "triton":
        raise DeployError("--stitch triton is the linear head's kernel; a Mask2Former artifact takes --stitch auto, "
                          "chunked or torch")
    return "torch" if stitch == "torch" else "chunked"


def m2f_labels(predictor, image: np.ndarray, window: int, stride: int | None, batch_windows: int,
               tta: bool, stitch: str = "chunked") -> np.ndarray:
    """[H, W] uint8 labels of uint8 `image` [H, W, 3] by the release's M2F protocol on the artifact."""
    probs = m2f_probabilities(predictor, image, window, stride, batch_windows, tta, stitch)
    return probs.argmax(1)[0].to(torch.uint8).cpu().numpy()


def m2f_inputs(predictor, image: np.ndarray, window: int, stride: int | None, tta: bool) -> Iterator[tuple]:
    """(normalised view [1,3,h,w] on the device, flipped, stride) per view of the protocol, mirrors included."""
    from dinov3_deploy.reference.protocol.m2f import TTA_RATIOS, check_windows, tta_short_sides
    from dinov3_deploy.reference.training.m2f_eval import m2f_views

    io = predictor.artifact.manifest.io
    if io.uint8_input:
        raise DeployError("a Mask2Former artifact with --uint8-input cannot run the M2F protocol here")
    step = m2f_stride(window, stride)
    for view in m2f_views(image, tta_short_sides(window, TTA_RATIOS if tta else (1.0,)), io.mean, io.std):
        view = view.to(predictor.device)
        try:
            check_windows(int(view.shape[-2]), int(view.shape[-1]), window, step)
        except ValueError as exc:
            raise DeployError(str(exc)) from exc
        for flipped in (False, True) if tta else (False,):
            yield (view.flip(-1) if flipped else view), flipped, step


@torch.no_grad()
def m2f_probabilities(predictor, image: np.ndarray, window: int, stride: int | None, batch_windows: int,
                      tta: bool, stitch: str = "chunked") -> torch.Tensor:
    """[1, C, H, W] class probabilities summed over the views (their mean's argmax is the label)."""
    out_size = tuple(image.shape[:2])
    total = None
    for x, flipped, step in m2f_inputs(predictor, image, window, stride, tta):
        batches = window_batches(predictor, x, window, step, batch_windows, stitch)
        s = stitch_view(batches, x, predictor.artifact.manifest, window, step, out_size, batch_windows, stitch)
        probs = F.softmax(s.flip(-1) if flipped else s, dim=1)
        total = probs if total is None else total + probs  # the mean's argmax: the sum's
    return total


def stitch_outputs(manifest, stitch: str) -> dict[str, str]:
    """The graph outputs a stitch reads: {role: output name}."""
    roles = ("scores",) if stitch == "torch" else ("class_logits", "mask_logits")
    return {role: manifest.output_name("seg", role) for role in roles}


def window_batches(predictor, x: torch.Tensor, window: int, step: int, batch_windows: int, stitch: str,
                   keep: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """The windows of view `x` through the predictor, `batch_windows` at a time in the slide order:
    per batch {role: float tensor} of the outputs the stitch reads. They are valid until the next
    batch is drawn (a CUDA graph or engine reuses its buffers) unless `keep` copies them."""
    from dinov3_deploy.reference.protocol.sliding_window import window_grid

    names = stitch_outputs(predictor.artifact.manifest, stitch)
    windows = window_grid(int(x.shape[-2]), int(x.shape[-1]), window, step)
    for start in range(0, len(windows), batch_windows):
        crops = torch.cat([x[..., y0:y1, x0:x1] for y0, y1, x0, x1 in windows[start:start + batch_windows]])
        out = predictor(crops.contiguous())
        yield {role: (out[name].float().clone() if keep else out[name].float()) for role, name in names.items()}


def stitch_view(batches: Iterable[dict[str, torch.Tensor]], x: torch.Tensor, manifest, window: int, step: int,
                out_size: tuple[int, int], batch_windows: int, stitch: str) -> torch.Tensor:
    """[1, C, out_h, out_w] scores of view `x` from its window batches (window_batches' order):
    "torch" sums the graph's per-window scores with the reference slide_inference; "chunked" adds
    each window into the view's canvas from its class and mask logits (m2f_stitch.py)."""
    from dinov3_deploy.reference.protocol.sliding_window import slide_inference, window_geometry

    from .m2f_stitch import add_windows, finish_view, m2f_canvas

    n_classes = manifest.head.n_classes
    it = iter(batches)
    if stitch == "torch":
        return slide_inference(lambda crops: next(it)["scores"], x, n_classes, window, step, out_size=out_size,
                               batch_size=batch_windows)
    g = window_geometry(int(x.shape[-2]), int(x.shape[-1]), window, step)
    canvas, count = m2f_canvas(g, n_classes, x.device)
    windows = g.windows()
    for start in range(0, len(windows), batch_windows):
        out = next(it)
        add_windows(canvas, out["class_logits"], out["mask_logits"], windows[start:start + batch_windows])
    return finish_view(canvas, count, out_size)


def stitch_seconds(predictor, image: np.ndarray, window: int, stride: int | None, batch_windows: int,
                   stitch: str) -> tuple[float, float]:
    """(seconds of the window forwards, seconds of the stitch) of the image's first view, timed apart."""
    import time

    sync = torch.cuda.synchronize if predictor.device.type == "cuda" else (lambda: None)
    x, _, step = next(m2f_inputs(predictor, image, window, stride, False))
    sync()
    t0 = time.perf_counter()
    batches = list(window_batches(predictor, x, window, step, batch_windows, stitch, keep=True))
    sync()
    t1 = time.perf_counter()
    stitch_view(batches, x, predictor.artifact.manifest, window, step, tuple(image.shape[:2]), batch_windows,
                stitch).argmax(1).cpu()
    return t1 - t0, time.perf_counter() - t1

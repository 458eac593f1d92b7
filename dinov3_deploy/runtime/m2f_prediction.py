"""One image through a Mask2Former artifact with the release's protocol (reference/protocol/m2f.py):
views resized from the uint8 image as the reference evaluation resizes them, the sliding window over
each view (and its mirror with TTA), the graph's per-window semantic scores summed per window on the
predictor's device, probabilities averaged over the views, argmax.

The views and the view arithmetic are the reference's own functions (training/m2f_eval.m2f_views,
protocol/m2f.tta_short_sides, sliding_window.slide_inference), fed the artifact's scores: so the
labels are those of `eval` on the same images up to the graph's numeric error."""

from __future__ import annotations

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


def m2f_labels(predictor, image: np.ndarray, window: int, stride: int | None, batch_windows: int,
               tta: bool) -> np.ndarray:
    """[H, W] uint8 labels of uint8 `image` [H, W, 3] by the release's M2F protocol on the artifact."""
    probs = m2f_probabilities(predictor, image, window, stride, batch_windows, tta)
    return probs.argmax(1)[0].to(torch.uint8).cpu().numpy()


@torch.no_grad()
def m2f_probabilities(predictor, image: np.ndarray, window: int, stride: int | None, batch_windows: int,
                      tta: bool) -> torch.Tensor:
    """[1, C, H, W] class probabilities summed over the views (their mean's argmax is the label)."""
    from dinov3_deploy.reference.protocol.m2f import TTA_RATIOS, check_windows, tta_short_sides
    from dinov3_deploy.reference.protocol.sliding_window import slide_inference
    from dinov3_deploy.reference.training.m2f_eval import m2f_views

    manifest = predictor.artifact.manifest
    io = manifest.io
    if io.uint8_input:
        raise DeployError("a Mask2Former artifact with --uint8-input cannot run the M2F protocol here")
    n_classes = manifest.head.n_classes
    scores_name = manifest.output_name("seg", "scores")
    step = m2f_stride(window, stride)
    sides = tta_short_sides(window, TTA_RATIOS if tta else (1.0,))
    H, W = image.shape[:2]

    def scores_of(windows: torch.Tensor) -> torch.Tensor:
        # [b, C, h, w] at the window size: the graph's scores (mask logits upsampled before the sigmoid)
        return predictor(windows.contiguous())[scores_name].float()

    total = None
    for view in m2f_views(image, sides, io.mean, io.std):
        view = view.to(predictor.device)
        try:
            check_windows(int(view.shape[-2]), int(view.shape[-1]), window, step)
        except ValueError as exc:
            raise DeployError(str(exc)) from exc
        for flipped in (False, True) if tta else (False,):
            x = view.flip(-1) if flipped else view
            s = slide_inference(scores_of, x, n_classes, window, step, out_size=(H, W), batch_size=batch_windows)
            probs = F.softmax(s.flip(-1) if flipped else s, dim=1)
            total = probs if total is None else total + probs  # the mean's argmax: the sum's
    return total

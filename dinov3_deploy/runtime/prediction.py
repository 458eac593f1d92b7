"""One image through a Predictor: seg by the official sliding window (cut, batched, run and stitched on
the predictor's device), the other tasks on the whole image resized to a valid input; numpy out.

Images are resized (bilinear, short side = the window size) so every window is a valid input of
the artifact, and results are resized back to the original image size, as in the release."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dinov3_deploy.errors import DeployError

from .prefetch import to_device
from .stitches import STITCHES


@dataclass
class Prediction:
    """One image's results. A multi-head artifact's prediction (task "multi") holds every task's
    field at once; `tasks` lists which are filled, in the artifact's head order."""

    name: str
    image: np.ndarray  # uint8 HxWx3 as given
    task: str  # the artifact's task: one task, or "multi"
    labels: np.ndarray | None = None  # seg: HxW class ids
    depth: np.ndarray | None = None  # depth: HxW metres
    logits: np.ndarray | None = None  # cls: [C]
    patch: np.ndarray | None = None  # features: [h, w, D]
    tasks: tuple[str, ...] = ()  # default: (task,)

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks) or (self.task,)



def window_size(shapes, requested: int | None) -> int:
    """The sliding-window crop: requested, else the artifact's opt size; must fit its H and W ranges."""
    crop = requested or min(shapes.height.opt, shapes.width.opt)
    ok = (crop % shapes.multiple == 0 and shapes.height.min <= crop <= shapes.height.max
          and shapes.width.min <= crop <= shapes.width.max)
    if not ok:
        raise DeployError(
            f"--window {crop} is not an input this artifact accepts (H {shapes.height.min}..{shapes.height.max}, "
            f"W {shapes.width.min}..{shapes.width.max}, multiple of {shapes.multiple})")
    return crop



def resize_short_side(pixels: torch.Tensor, short: int) -> torch.Tensor:
    h, w = pixels.shape[-2:]
    s = short / min(h, w)
    nh, nw = max(short, round(h * s)), max(short, round(w * s))
    if (nh, nw) == (h, w):
        return pixels
    return F.interpolate(pixels, size=(nh, nw), mode="bilinear", align_corners=False)





def resolve_stitch(stitch: str, device: torch.device, manifest=None) -> str:
    """auto: the Triton kernel on a GPU, the reference on the CPU. triton on the CPU needs the
    interpreter (TRITON_INTERPRET=1, set before triton is imported). A Mask2Former artifact's
    `manifest`: its own stitches (m2f_prediction.resolve_m2f_stitch)."""
    from dinov3_deploy.kernels.attention import interpreting

    from .m2f_prediction import is_m2f_artifact, resolve_m2f_stitch

    if manifest is not None and is_m2f_artifact(manifest):
        return resolve_m2f_stitch(stitch)
    if stitch == "torch-cpu":  # the reference stitch on the host (the pre-device path, for benchmarks)
        return stitch
    if stitch not in STITCHES:
        raise DeployError(f"--stitch must be one of {', '.join(STITCHES)}, got '{stitch}'")
    if stitch == "chunked":
        raise DeployError("--stitch chunked is the Mask2Former stitch; this artifact takes auto, triton or torch")
    if stitch == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if stitch == "triton" and device.type != "cuda" and not interpreting():
        raise DeployError(f"--stitch triton: the backend computes on '{device}' and the Triton kernel needs a CUDA "
                          "GPU (or TRITON_INTERPRET=1 for the slow CPU interpreter); use --stitch torch")
    return stitch



def batch_windows_of(shapes, requested: int | None) -> int:
    """Windows per predictor call: requested (within the artifact's batch range), else up to 4."""
    if requested is None:
        return max(1, min(shapes.batch.max, 4))
    if not shapes.batch.min <= requested <= shapes.batch.max:
        raise DeployError(f"--batch-windows {requested} is outside the artifact's batch range "
                          f"{shapes.batch.min}..{shapes.batch.max}")
    return requested



def window_logits(predictor, pixels: torch.Tensor, geometry, batch_windows: int,
                  output: str = "logits") -> torch.Tensor:
    """Low-res logits [n_windows, C, h', w'] of every window of `pixels` (float 0..255 [1,3,H,W] on the
    predictor's device), windows in the geometry's row-major order, `batch_windows` per call. `output`:
    the graph output holding them ("seg.logits" in a multi-head graph)."""
    windows = geometry.windows()
    out = None
    for start in range(0, len(windows), batch_windows):
        chunk = windows[start:start + batch_windows]
        crops = torch.cat([pixels[..., y0:y1, x0:x1] for y0, y1, x0, x1 in chunk])
        logits = predictor(predictor.to_input(crops))[output]
        if out is None:  # the outputs may be a reused buffer (CUDA graph, engine): copy them out now
            out = torch.empty((len(windows), *logits.shape[1:]), dtype=torch.float32, device=logits.device)
        out[start:start + len(chunk)].copy_(logits)
    return out



def stitch_labels(logits: torch.Tensor, pixels: torch.Tensor, geometry, out_size: tuple[int, int],
                  stitch: str) -> torch.Tensor:
    """Per-window logits -> labels [OH, OW] (int64, on the logits' device): the Triton kernel, or the
    reference slide_inference fed the same logits (so both stitch exactly the same numbers)."""
    H, W = geometry.image_h, geometry.image_w
    crop, stride = (geometry.crop_h, geometry.crop_w), (geometry.stride_h, geometry.stride_w)
    if stitch == "triton":
        from dinov3_deploy.kernels.stitch import stitch_into

        labels = torch.empty(out_size, dtype=torch.int64, device=logits.device)
        stitch_into(logits, (H, W), crop, stride, labels)
        return labels
    from dinov3_deploy.reference.protocol.sliding_window import slide_inference

    if stitch == "torch-cpu":
        logits, pixels = logits.cpu(), pixels.cpu()
    full = slide_inference(lambda crops: logits, pixels, logits.shape[1], crop, stride, out_size=out_size,
                           batch_size=len(geometry))
    return full.argmax(1)[0]



def predict_image(predictor, name: str, image: np.ndarray, *, crop: int | None = None, stride: int | None = None,
                  batch_windows: int | None = None, stitch: str = "auto",
                  device_image: torch.Tensor | None = None, tta: bool = False) -> Prediction:
    """One image through the predictor: seg by the sliding window (cut, batched, run and stitched on the
    predictor's device), other tasks on the whole image resized to a valid input. Numpy out.
    A multi-head artifact does both: its seg output from the windows, every other task's from one
    whole-image pass (so each task's result equals its single-head artifact's).
    `device_image`: the image already on the predictor's device (from `to_device_ahead`), else copied here.
    A Mask2Former artifact runs the release's M2F protocol (m2f_prediction.py); `tta`: its ratios and flips."""
    from dinov3_deploy.reference.protocol.sliding_window import window_geometry

    art = predictor.artifact
    manifest = art.manifest
    tasks = tuple(manifest.tasks)
    shapes = art.shapes()
    size = window_size(shapes, crop)
    if device_image is None:
        device_image = to_device(image, predictor.device)
    pixels = device_image.permute(2, 0, 1)[None].float()
    H, W = image.shape[:2]
    pred = Prediction(name, image, art.task, tasks=tasks)
    from .m2f_prediction import is_m2f_artifact, m2f_labels, resolve_m2f_stitch

    if is_m2f_artifact(manifest):
        pred.labels = m2f_labels(predictor, image, size, stride, batch_windows_of(shapes, batch_windows), tta,
                                 resolve_m2f_stitch(stitch))
        return pred
    if tta:
        raise DeployError("--tta applies to Mask2Former artifacts (the release's M2F protocol)")
    if "seg" in tasks:
        scaled = resize_short_side(pixels, size)
        g = window_geometry(scaled.shape[-2], scaled.shape[-1], size, stride or max(shapes.multiple, size * 2 // 3))
        logits = window_logits(predictor, scaled, g, batch_windows_of(shapes, batch_windows),
                               output=manifest.output_name("seg", "logits"))
        labels = stitch_labels(logits, scaled, g, (H, W), resolve_stitch(stitch, logits.device))
        pred.labels = labels.to(torch.uint8).cpu().numpy()
    if all(t == "seg" for t in tasks):
        return pred
    # Whole-image tasks: one input resized to a valid size, outputs mapped back to the image.
    th = min(max(shapes.height.min, round(H / shapes.multiple) * shapes.multiple), shapes.height.max)
    tw = min(max(shapes.width.min, round(W / shapes.multiple) * shapes.multiple), shapes.width.max)
    x = F.interpolate(pixels, size=(th, tw), mode="bilinear", align_corners=False) if (th, tw) != (H, W) else pixels
    # Its shape follows the image: not graphed. Read every output before the next call reuses its buffers.
    out = predictor(predictor.to_input(x), fixed_shape=False)
    if "depth" in tasks:
        d = F.interpolate(out[manifest.output_name("depth", "depth")].float(), size=(H, W), mode="bilinear",
                          align_corners=False)
        pred.depth = d[0, 0].cpu().numpy()
    if "cls" in tasks:
        pred.logits = out[manifest.output_name("cls", "logits")][0].float().cpu().numpy()
    if "features" in tasks:
        patch = out[manifest.output_name("features", "patch")][0].float().cpu().numpy()
        bb = manifest.backbone
        stride_px = bb.patch_size if bb.family == "vit" else 32  # ConvNeXt tokens: the last stage
        gh, gw = th // stride_px, tw // stride_px
        pred.patch = patch.reshape(gh, gw, -1) if gh * gw == len(patch) else patch
    return pred

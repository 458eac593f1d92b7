"""`infer`: run an artifact's backend on images. Segmentation uses the official sliding-window
protocol (reference/sliding_window.py) around the deployed model; depth maps are upsampled to the
image; classification gives the top classes; features give patch tokens (and a PCA picture).

Images are resized (bilinear, short side = the window size) so every window is a valid input of
the artifact, and results are resized back to the original image size, as in the release.

Outputs are named after the input's path relative to the folder it was found in, extension
included (`imgs/sub/a.jpg` -> `OUT/sub/a.jpg_seg.png`): naming them by the stem alone made
`a.jpg` and `a.png` write the same files, and one result was silently lost. Every file is written
atomically, so an interrupted run leaves no truncated PNG or .npy that looks like a result."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dinov3_deploy.atomic import atomic_write, write_bytes
from dinov3_deploy.errors import DeployError
from dinov3_deploy.manifest import Manifest
from dinov3_deploy.reference.protocol.images import IMAGE_EXTS, is_image

#: The files each task writes per image, as suffixes of the image's output name.
OUTPUT_SUFFIXES = {
    "seg": ("_labels.png", "_seg.png"),
    "depth": ("_depth.npy", "_depth.png"),
    "cls": (),
    "features": ("_patch_tokens.npy", "_pca.png"),
}


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


@dataclass(frozen=True)
class ImageInput:
    """One image to run: `name` is its path relative to the folder argument it came from (the
    file name for a file argument), posix, extension included; outputs are named after it."""

    name: str
    source: Path | np.ndarray


def output_files(task: str, name: str) -> list[str]:
    """Relative paths of the files `save_prediction` writes for the image called `name`."""
    return [name + suffix for suffix in OUTPUT_SUFFIXES.get(task, ())]


def _under(path: Path, folder: Path | None) -> bool:
    return folder is not None and (path == folder or folder in path.parents)


def _scan(folder: Path, exclude: Path | None) -> list[Path]:
    """Image files under `folder`, recursively, sorted; hidden files and folders are skipped, and so
    is `exclude` (the output folder, so results of an earlier run are not read as inputs)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not _under((here / d).resolve(), exclude))
        found += [here / f for f in sorted(filenames) if not f.startswith(".") and is_image(f)]
    return found


def list_images(paths: Iterable[str | os.PathLike], exclude: str | os.PathLike | None = None) -> list[ImageInput]:
    """The images named by `paths` (files, or folders read recursively), each with its output name.

    The same file reached twice is run once. Two different files that would get the same output
    name (two folder arguments holding `a.jpg`, or `x/a.jpg` and `y/a.jpg` given as files) are
    refused here, before any work, since one result would overwrite the other."""
    paths = [Path(p) for p in paths]
    skip = Path(exclude).resolve() if exclude is not None else None
    inputs: list[ImageInput] = []
    by_name: dict[str, Path] = {}
    seen: set[Path] = set()
    clashes: list[str] = []
    for arg in paths:
        if arg.is_dir():
            found = [(f, f.relative_to(arg).as_posix()) for f in _scan(arg, skip)]
        elif arg.is_file():
            found = [(arg, arg.name)]
        else:
            raise DeployError(f"no such image or folder: {arg}")
        for file, name in found:
            real = file.resolve()
            if real in seen:
                continue
            seen.add(real)
            if name in by_name:
                clashes.append(f"{by_name[name]} and {file} (both '{name}')")
                continue
            by_name[name] = file
            inputs.append(ImageInput(name, file))
    if clashes:
        shown = "; ".join(clashes[:3]) + (f"; and {len(clashes) - 3} more" if len(clashes) > 3 else "")
        raise DeployError(f"different images would write the same outputs: {shown}. Outputs are named after the "
                          "path relative to the folder given; run them separately with different --out folders")
    if not inputs:
        raise DeployError(f"no images ({', '.join(IMAGE_EXTS)}) found in {', '.join(map(str, paths))}")
    return inputs


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


def _resize_short_side(pixels: torch.Tensor, short: int) -> torch.Tensor:
    h, w = pixels.shape[-2:]
    s = short / min(h, w)
    nh, nw = max(short, round(h * s)), max(short, round(w * s))
    if (nh, nw) == (h, w):
        return pixels
    return F.interpolate(pixels, size=(nh, nw), mode="bilinear", align_corners=False)


STITCHES = ("auto", "triton", "torch")


def resolve_stitch(stitch: str, device: torch.device) -> str:
    """auto: the Triton kernel on a GPU, the reference on the CPU. triton on the CPU needs the
    interpreter (TRITON_INTERPRET=1, set before triton is imported)."""
    from dinov3_deploy.kernels.attention import interpreting

    if stitch == "torch-cpu":  # the reference stitch on the host (the pre-device path, for benchmarks)
        return stitch
    if stitch not in STITCHES:
        raise DeployError(f"--stitch must be one of {', '.join(STITCHES)}, got '{stitch}'")
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


def to_device(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """The plain host-to-device path: uint8 HxWx3 numpy -> the same tensor on `device`, on the current
    stream (`on_device` is the overlapped one, for a stream of images)."""
    return _host_tensor(image).to(device)


def _host_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(image, requirements=("C", "W")))  # copies only a read-only array


def predict_image(predictor, name: str, image: np.ndarray, *, crop: int | None = None, stride: int | None = None,
                  batch_windows: int | None = None, stitch: str = "auto",
                  device_image: torch.Tensor | None = None) -> Prediction:
    """One image through the predictor: seg by the sliding window (cut, batched, run and stitched on the
    predictor's device), other tasks on the whole image resized to a valid input. Numpy out.
    A multi-head artifact does both: its seg output from the windows, every other task's from one
    whole-image pass (so each task's result equals its single-head artifact's).
    `device_image`: the image already on the predictor's device (from `on_device`), else copied here."""
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
    if "seg" in tasks:
        scaled = _resize_short_side(pixels, size)
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
    out = predictor(predictor.to_input(x))  # read every output before the next call reuses its buffers
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


def pca_rgb(patch: np.ndarray) -> np.ndarray:
    """Patch features [h, w, D] -> uint8 RGB [h, w, 3] from their first three principal components."""
    h, w, d = patch.shape
    x = patch.reshape(-1, d).astype(np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    p = x @ vt[:3].T
    lo, hi = np.percentile(p, 1, axis=0), np.percentile(p, 99, axis=0)
    p = np.clip((p - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return (p.reshape(h, w, 3) * 255).astype(np.uint8)


def save_prediction(pred: Prediction, out_dir: Path, manifest: Manifest) -> dict:
    """Write the outputs people use (label PNG, panel with legend, depth .npy + picture with a colour
    bar, ...), each atomically, under the names `output_files` gives for each of the prediction's
    tasks; returns a summary: the task's fields, or for a multi-head artifact {"tasks": {task: fields}}."""
    from PIL import Image

    def png(name: str, pixels: np.ndarray) -> None:
        # The temporary name has no .png suffix, so the format is given explicitly.
        atomic_write(out_dir / name, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))

    def npy(name: str, array: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, array)  # to a buffer: given a path without .npy, np.save would append one
        write_bytes(out_dir / name, buf.getvalue())

    per_task: dict[str, dict] = {}
    for task in pred.tasks:
        files = output_files(task, pred.name)
        fields: dict = {}
        if task == "seg" and pred.labels is not None:
            from dinov3_deploy.reference.training.visualize import seg_picture

            classes = manifest.classes_for("seg")
            head = manifest.head_for("seg")
            palette = (classes.palette if classes else None) or _palette(head.n_classes if head else 0)
            names = classes.names if classes else []
            ids, counts = np.unique(pred.labels, return_counts=True)
            shares = {int(i): float(c) / pred.labels.size for i, c in zip(ids.tolist(), counts.tolist())}
            png(files[0], pred.labels)
            png(files[1], seg_picture(pred.image, pred.labels, palette, names, shares))
            fields["classes"] = {_class_name(names, i): round(s, 4) for i, s in shares.items()}
        elif task == "depth" and pred.depth is not None:
            d = pred.depth.astype(np.float32)
            npy(files[0], d)
            atomic_write(out_dir / files[1], lambda tmp, d=d: save_depth_picture(tmp, pred.image, d))
            fields["depth_m"] = {"min": float(d.min()), "median": float(np.median(d)), "max": float(d.max())}
        elif task == "cls" and pred.logits is not None:
            classes = manifest.classes_for("cls")
            names = classes.names if classes else []
            fields["top5"] = [{"class": names[i] if i < len(names) else int(i), "logit": float(pred.logits[i]),
                               "probability": round(p, 6)} for i, p in top_k(pred.logits, 5)]
        elif task == "features" and pred.patch is not None:
            npy(files[0], pred.patch.astype(np.float32))
            if pred.patch.ndim == 3:
                pca = Image.fromarray(pca_rgb(pred.patch)).resize(pred.image.shape[1::-1], Image.NEAREST)
                png(files[1], np.concatenate([pred.image, np.asarray(pca)], axis=1))
            fields["patch_tokens"] = list(pred.patch.shape)
        per_task[task] = fields
    if len(pred.tasks) == 1:  # a single-task artifact: its fields beside the image name, as before
        return {"image": pred.name, "task": pred.task, **per_task[pred.tasks[0]]}
    return {"image": pred.name, "task": pred.task, "tasks": per_task}



def top_k(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(class id, softmax probability) of the k highest logits, best first."""
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    return [(int(i), float(p[i])) for i in np.argsort(-z, kind="stable")[:k]]


def _class_name(names: list[str], i: int) -> str:
    return names[i] if 0 <= i < len(names) else str(i)


def save_depth_picture(path: str | os.PathLike, image: np.ndarray, depth: np.ndarray) -> None:
    """image | depth map side by side, the depth with a colour bar in metres (matplotlib, Agg, no
    pyplot global state); near is bright, as in `train`'s depth figure."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = depth.shape
    tall = float(np.clip(h / 100, 3, 10))  # inches: readable labels on small images, bounded on big ones
    fig = Figure(figsize=(min(2 * tall * w / h + 1.6, 40), tall + 0.3), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    left.imshow(image)
    shown = right.imshow(depth, cmap=colormaps["magma_r"], interpolation="nearest")
    for ax, title in ((left, "image"), (right, "depth")):
        ax.set_axis_off()
        ax.set_title(title, fontsize=9)
    fig.colorbar(shown, ax=right, fraction=0.046, pad=0.02).set_label("depth (m)", fontsize=9)
    fig.savefig(os.fspath(path), format="png")


def _palette(n: int) -> list[list[int]]:
    from dinov3_deploy.reference.protocol.synthetic import palette

    try:
        return palette(n)
    except Exception:  # noqa: BLE001 - beyond the synthetic palette: a deterministic colour wheel
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, size=(max(n, 1), 3)).tolist()


def decoded(inputs: list[ImageInput], workers: int = 2, ahead: int = 4, pin: bool = False):
    """(input, uint8 HxWx3 image or the exception reading it raised) for each input, in order, decoded
    by a background thread pool up to `ahead` images in advance, so the device is not idle while a
    JPEG is decoded (PIL and numpy release the GIL while they decode and convert).

    pin: the workers also copy each image into page-locked host memory and hand over that torch tensor
    (not numpy), so its copy to the GPU can be asynchronous (`on_device`); pageable memory would make
    the copy wait for the host."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from dinov3_deploy.reference.protocol.images import read_rgb

    def read(item: ImageInput):
        try:
            image = read_rgb(item.source) if isinstance(item.source, Path) else item.source
            return _host_tensor(image).pin_memory() if pin else image
        except Exception as exc:  # noqa: BLE001 - handed to the caller, which reports it and goes on
            return exc

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        pending: deque = deque()
        for item in inputs:
            pending.append((item, pool.submit(read, item)))
            if len(pending) > ahead:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()


def on_device(images, device: torch.device, ahead: int = 1):
    """(input, image as numpy or the exception reading it, the image on `device` or None) for each
    (input, image) of `images` (`decoded`). On the CPU the third item is None: `predict_image` takes the
    numpy image as before. On a GPU, each image's copy runs on a side stream, issued `ahead` images
    before the caller gets that image, so image i+1 crosses PCIe while image i computes.

    Order and lifetime on a GPU: the caller's stream waits on the copy's event before the image is
    handed over (work it then enqueues comes after the copy); `record_stream` tells the caching
    allocator that the caller's stream uses the device copy, so its memory, allocated on the side
    stream, is not reused before that work is done; the pinned host tensor is copied from as itself (the
    host allocator then records the copy and keeps the block until it is done) and stays referenced by
    the numpy image returned."""
    if device.type != "cuda":
        for item, image in images:
            yield item, image, None
        return
    from collections import deque

    copier = torch.cuda.Stream(device)
    pending: deque = deque()

    def start(item, image):
        if isinstance(image, Exception):
            return item, image, None, None
        host = _host_tensor(image) if isinstance(image, np.ndarray) else image  # else pinned by `decoded`
        with torch.cuda.stream(copier):
            dev = host.to(device, non_blocking=True)  # asynchronous only from pinned memory
            done = torch.cuda.Event()
            done.record(copier)
        return item, host.numpy(), dev, done

    def finish(item, image, dev, done):
        if dev is not None:
            consumer = torch.cuda.current_stream(device)
            consumer.wait_event(done)
            dev.record_stream(consumer)
        return item, image, dev

    for item, image in images:
        pending.append(start(item, image))
        if len(pending) > ahead:
            yield finish(*pending.popleft())
    while pending:
        yield finish(*pending.popleft())


def image_stream(inputs: list[ImageInput], device: torch.device, workers: int = 2, ahead: int = 4):
    """`infer`'s input pipeline: decoded in the background (into pinned memory on a GPU) and copied to
    `device` one image ahead of the compute; yields (input, numpy image or exception, device image or None)."""
    return on_device(decoded(inputs, workers, ahead, pin=device.type == "cuda"), device)

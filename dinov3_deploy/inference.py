"""`infer`: run an artifact's backend on images. Segmentation uses the official sliding-window
protocol (reference/sliding_window.py) around the deployed model; depth maps are upsampled to the
image; classification gives the top classes; features give patch tokens (and a PCA picture).

Images are resized (bilinear, short side = the window size) so every window is a valid input of
the artifact, and results are resized back to the original image size, as in the release."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dinov3_deploy.errors import DeployError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Prediction:
    name: str
    image: np.ndarray  # uint8 HxWx3 as given
    task: str
    labels: np.ndarray | None = None  # seg: HxW class ids
    depth: np.ndarray | None = None  # depth: HxW metres
    logits: np.ndarray | None = None  # cls: [C]
    patch: np.ndarray | None = None  # features: [h, w, D]


def list_images(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        elif p.is_file():
            files.append(p)
        else:
            raise DeployError(f"no such image or folder: {p}")
    if not files:
        raise DeployError(f"no images ({', '.join(IMAGE_EXTS)}) found in {', '.join(paths)}")
    return files


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise DeployError(f"cannot read image {path}: {exc}") from exc


class ArtifactModel:
    """The artifact's runner seen as a function of uint8-valued float NCHW windows."""

    def __init__(self, artifact, runner) -> None:
        self.artifact, self.runner = artifact, runner
        inp = artifact.manifest["input"]
        self.uint8 = inp["dtype"] == "uint8"
        self.mean = np.asarray(inp["normalize"]["mean"], np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(inp["normalize"]["std"], np.float32).reshape(1, 3, 1, 1)
        self.shapes = artifact.shapes()

    def __call__(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """pixels: float [b,3,h,w] holding 0..255 RGB values."""
        x = pixels.round().clamp(0, 255).numpy()
        if self.uint8:
            batch = np.ascontiguousarray(x.transpose(0, 2, 3, 1).astype(np.uint8))
        else:
            batch = np.ascontiguousarray((x / 255.0 - self.mean) / self.std, dtype=np.float32)
        self.shapes.check(*pixels.shape[:1], *pixels.shape[-2:])
        return {k: torch.from_numpy(np.asarray(v)) for k, v in self.runner.run(batch).items()}


def window_size(shapes, requested: int | None) -> int:
    """The sliding-window crop: requested, else the artifact's opt size; must fit its H and W ranges."""
    crop = requested or min(shapes.height.opt, shapes.width.opt)
    ok = (crop % shapes.multiple == 0 and shapes.height.min <= crop <= shapes.height.max
          and shapes.width.min <= crop <= shapes.width.max)
    if not ok:
        raise DeployError(
            f"window {crop} is not an input this artifact accepts (H {shapes.height.min}..{shapes.height.max}, "
            f"W {shapes.width.min}..{shapes.width.max}, multiple of {shapes.multiple})")
    return crop


def _resize_short_side(pixels: torch.Tensor, short: int, multiple: int) -> torch.Tensor:
    h, w = pixels.shape[-2:]
    s = short / min(h, w)
    nh, nw = max(short, round(h * s)), max(short, round(w * s))
    if (nh, nw) == (h, w):
        return pixels
    return F.interpolate(pixels, size=(nh, nw), mode="bilinear", align_corners=False)


def predict_image(model: ArtifactModel, name: str, image: np.ndarray, *, crop: int | None = None,
                  stride: int | None = None) -> Prediction:
    from dinov3_deploy.reference.training.sliding_window import slide_inference

    task = model.artifact.task
    shapes = model.shapes
    size = window_size(shapes, crop)
    pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()[None]
    H, W = image.shape[:2]
    if task == "seg":
        n_classes = int(model.artifact.manifest["head"]["n_classes"])
        scaled = _resize_short_side(pixels, size, shapes.multiple)
        logits = slide_inference(lambda x: model(x)["logits"], scaled, n_classes, size,
                                 stride or max(shapes.multiple, size * 2 // 3), out_size=(H, W),
                                 batch_size=max(1, min(shapes.batch.max, 4)))
        return Prediction(name, image, task, labels=logits.argmax(1)[0].to(torch.uint8).numpy())
    # Whole-image tasks: one input resized to a valid size, outputs mapped back to the image.
    th = min(max(shapes.height.min, round(H / shapes.multiple) * shapes.multiple), shapes.height.max)
    tw = min(max(shapes.width.min, round(W / shapes.multiple) * shapes.multiple), shapes.width.max)
    x = F.interpolate(pixels, size=(th, tw), mode="bilinear", align_corners=False) if (th, tw) != (H, W) else pixels
    out = model(x)
    if task == "depth":
        d = F.interpolate(out["depth"].float(), size=(H, W), mode="bilinear", align_corners=False)
        return Prediction(name, image, task, depth=d[0, 0].numpy())
    if task == "cls":
        return Prediction(name, image, task, logits=out["logits"][0].numpy())
    patch = out["patch"][0].numpy()
    cfg = model.artifact.manifest["backbone"]
    stride_px = cfg["patch_size"] if cfg["family"] == "vit" else 32  # ConvNeXt tokens: the last stage
    gh, gw = th // stride_px, tw // stride_px
    return Prediction(name, image, task, patch=patch.reshape(gh, gw, -1) if gh * gw == len(patch) else patch)


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


def save_prediction(pred: Prediction, out_dir: Path, manifest: dict) -> dict:
    """Write the outputs people use (label PNG, overlay, depth .npy + colour map, ...); returns a summary."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(pred.name).stem
    summary = {"image": pred.name, "task": pred.task}
    if pred.labels is not None:
        from dinov3_deploy.reference.training.visualize import colorize

        classes = manifest.get("classes") or {}
        palette = classes.get("palette") or _palette(int(manifest["head"]["n_classes"]))
        names = classes.get("names") or []
        Image.fromarray(pred.labels).save(out_dir / f"{stem}_labels.png")
        color = colorize(pred.labels, palette)
        overlay = (0.5 * pred.image + 0.5 * color).astype(np.uint8)
        Image.fromarray(np.concatenate([pred.image, overlay, color], axis=1)).save(out_dir / f"{stem}_seg.png")
        ids, counts = np.unique(pred.labels, return_counts=True)
        summary["classes"] = {(names[i] if i < len(names) else str(i)): round(float(c) / pred.labels.size, 4)
                              for i, c in zip(ids.tolist(), counts.tolist())}
    elif pred.depth is not None:
        import matplotlib

        np.save(out_dir / f"{stem}_depth.npy", pred.depth.astype(np.float32))
        d = pred.depth
        norm = (d - d.min()) / max(float(d.max() - d.min()), 1e-12)
        color = (matplotlib.colormaps["magma"](norm)[..., :3] * 255).astype(np.uint8)
        Image.fromarray(np.concatenate([pred.image, color], axis=1)).save(out_dir / f"{stem}_depth.png")
        summary["depth_m"] = {"min": float(d.min()), "median": float(np.median(d)), "max": float(d.max())}
    elif pred.logits is not None:
        top = np.argsort(-pred.logits)[:5]
        names = (manifest.get("classes") or {}).get("names") or []
        summary["top5"] = [{"class": names[i] if i < len(names) else int(i), "logit": float(pred.logits[i])}
                           for i in top]
    elif pred.patch is not None:
        np.save(out_dir / f"{stem}_patch_tokens.npy", pred.patch.astype(np.float32))
        if pred.patch.ndim == 3:
            pca = Image.fromarray(pca_rgb(pred.patch)).resize(pred.image.shape[1::-1], Image.NEAREST)
            Image.fromarray(np.concatenate([pred.image, np.asarray(pca)], axis=1)).save(out_dir / f"{stem}_pca.png")
        summary["patch_tokens"] = list(pred.patch.shape)
    return summary


def _palette(n: int) -> list[list[int]]:
    from dinov3_deploy.reference.training.synthetic import palette

    try:
        return palette(n)
    except Exception:  # noqa: BLE001 - beyond the synthetic palette: a deterministic colour wheel
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, size=(max(n, 1), 3)).tolist()

"""The files `infer` writes per image (label PNG, panel, depth .npy and picture, patch tokens, PCA
picture), each written atomically, so an interrupted run leaves no truncated PNG or .npy that looks
like a result; and the summary of each image that predictions.json holds."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from dinov3_deploy.atomic import atomic_write, write_bytes
from dinov3_deploy.manifest import Manifest

from .pictures import class_name, fallback_palette, pca_rgb, save_depth_picture, seg_panel
from .prediction import Prediction

#: The files each task writes per image, as suffixes of the image's output name.
OUTPUT_SUFFIXES = {
    "seg": ("_labels.png", "_seg.png"),
    "depth": ("_depth.npy", "_depth.png"),
    "cls": (),
    "features": ("_patch_tokens.npy", "_pca.png"),
}



def output_files(task: str, name: str) -> list[str]:
    """Relative paths of the files `save_prediction` writes for the image called `name`."""
    return [name + suffix for suffix in OUTPUT_SUFFIXES.get(task, ())]



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
            classes = manifest.classes_for("seg")
            head = manifest.head_for("seg")
            palette = (classes.palette if classes else None) or fallback_palette(head.n_classes if head else 0)
            names = classes.names if classes else []
            ids, counts = np.unique(pred.labels, return_counts=True)
            shares = {int(i): float(c) / pred.labels.size for i, c in zip(ids.tolist(), counts.tolist())}
            png(files[0], pred.labels)
            png(files[1], seg_panel(pred.image, pred.labels, shares, palette, names))
            fields["classes"] = {class_name(names, i): round(s, 4) for i, s in shares.items()}
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

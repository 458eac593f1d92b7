"""Datasets as sequences of (image uint8 [H,W,3] RGB, target), per task:

    seg    target = mask uint8 [H,W], 255 = ignore
      synthetic[:N]     the procedural dataset that ships with the package (synthetic.py)
      ade20k:PATH       ADE20K (ADEChallengeData2016 layout), reduce-zero-label, 150 classes
      folder:PATH       images/ + masks/ (PNG, class index per pixel, 255 ignore) + classes.txt
    depth  target = depth float32 [H,W] in metres, 0 = no ground truth
      synthetic[:N]     procedural scenes of known geometry (synthetic_depth.py)
      nyu:PATH          NYU Depth v2 exported as PNG pairs (see `nyu`)
    cls    target = class index (int)
      synthetic[:N]     procedural pictures whose class is the main object's material (synthetic.py)
      imagefolder:PATH  PATH/<class>/*.jpg, optionally split as PATH/train/<class>/, PATH/val/<class>/

`open_dataset(spec, split, task=...)` parses those strings; splits are "train" and "val".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

from dinov3_deploy.errors import DeployError

from ..protocol.images import IMAGE_EXTS, read_rgb

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)  # fmt: skip


def generated_palette(n: int) -> list[list[int]]:
    """n distinct-looking colours, deterministic (golden-ratio hue walk, varying lightness)."""
    import colorsys

    out = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        light = 0.45 + 0.2 * ((i // 7) % 2)
        r, g, b = colorsys.hls_to_rgb(h, light, 0.75)
        out.append([int(r * 255), int(g * 255), int(b * 255)])
    return out


def _read_mask(path: Path):
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DeployError(f"{path}: a mask must be a single-channel PNG of class indices (mode {im.mode})")
            return np.asarray(im).astype(np.uint8)
    except OSError as exc:
        raise DeployError(f"cannot read mask {path}: {exc}") from exc


class _Classes:
    """A dataset with `class_names`: its number of classes."""

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


@dataclass
class SegDataset(_Classes):
    """Base: pairs of files, classes and palette; items are (image, mask) numpy arrays."""

    name: str
    class_names: list[str]
    palette: list[list[int]]
    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    reduce_zero_label: bool = False

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        import numpy as np

        img_path, mask_path = self.pairs[i]
        image, mask = read_rgb(img_path), _read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise DeployError(f"{img_path} is {image.shape[:2]} but its mask {mask_path} is {mask.shape}")
        if self.reduce_zero_label:  # 0 (other) -> 255 ignore, k -> k - 1
            mask = np.where(mask == 0, 255, mask.astype(np.int16) - 1).astype(np.uint8)
        return image, mask


@dataclass
class _Synthetic(_Classes):
    """A procedural dataset: item i is make(seed_offset + i, height, width), generated on first use
    and cached."""

    make: object  # (seed, height, width) -> (image, target)
    size: int
    height: int
    width: int
    seed_offset: int = 0
    name: str = "synthetic"
    class_names: list[str] = field(default_factory=list)
    palette: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._get = lru_cache(maxsize=None)(lambda i: self.make(self.seed_offset + i, self.height, self.width))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        if not 0 <= i < self.size:
            raise IndexError(i)
        return self._get(i)


def synthetic_seg(size: int, height: int, width: int, n_classes: int = 6, seed_offset: int = 0) -> _Synthetic:
    """The procedural segmentation data: sample i is make_sample(seed_offset + i) with n_classes."""
    from ..protocol import synthetic

    return _Synthetic(partial(synthetic.make_sample, n_classes=n_classes), size, height, width, seed_offset,
                      class_names=synthetic.class_names(n_classes), palette=synthetic.palette(n_classes))


def synthetic_depth(size: int, height: int, width: int, seed_offset: int = 0) -> _Synthetic:
    from .synthetic_depth import make_depth_sample

    return _Synthetic(make_depth_sample, size, height, width, seed_offset, name="synthetic-depth")


def synthetic_cls(size: int, height: int, width: int, n_classes: int = 6, seed_offset: int = 0) -> _Synthetic:

    from ..protocol import synthetic

    return _Synthetic(partial(_cls_sample, n_classes=n_classes), size, height, width, seed_offset,
                      name="synthetic-cls", class_names=synthetic.class_names(n_classes),
                      palette=synthetic.palette(n_classes))


def _cls_sample(seed: int, height: int, width: int, n_classes: int):
    from ..protocol.synthetic import make_cls_sample

    return make_cls_sample(seed, height, width, n_classes)


def _stems(d: Path, exts) -> dict[str, Path]:
    return {p.stem: p for p in sorted(d.iterdir()) if p.suffix.lower() in exts}


def ade20k(root: str | os.PathLike, split: str = "train") -> SegDataset:
    """ADEChallengeData2016: images/{training,validation}/*.jpg, annotations/{...}/*.png (0 = other).
    A `{training,validation}.txt` (or train.txt/val.txt) list of names in root selects a subset."""
    root = Path(root)
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    sub = {"train": "training", "val": "validation"}.get(split, split)
    img_dir, ann_dir = root / "images" / sub, root / "annotations" / sub
    if not img_dir.is_dir() or not ann_dir.is_dir():
        raise DeployError(
            f"{root} is not an ADE20K directory: expected {img_dir} and {ann_dir} "
            "(the ADEChallengeData2016 layout)"
        )
    images, masks = _stems(img_dir, IMAGE_EXTS), _stems(ann_dir, (".png",))
    names = sorted(images)
    for list_name in (f"{sub}.txt", f"{split}.txt"):
        if (root / list_name).is_file():
            names = [Path(line.split()[0]).stem for line in (root / list_name).read_text().splitlines() if line.strip()]
            break
    missing = [n for n in names if n not in masks or n not in images]
    if missing:
        raise DeployError(f"ADE20K {split}: {len(missing)} images without an annotation, e.g. {missing[:3]}")
    pairs = [(images[n], masks[n]) for n in names]
    if not pairs:
        raise DeployError(f"ADE20K {split}: no images in {img_dir}")
    return SegDataset("ade20k", list(ADE20K_CLASSES), generated_palette(150), pairs, reduce_zero_label=True)


def folder(root: str | os.PathLike, split: str = "train") -> SegDataset:
    """root/images/[split/]*.{jpg,png}, root/masks/[split/]<same stem>.png, root/classes.txt (one
    class name per line, optionally followed by R G B). Without split subfolders the same files
    serve every split."""
    root = Path(root)
    classes_file = root / "classes.txt"
    if not classes_file.is_file():
        raise DeployError(f"{root}: classes.txt is missing (one class name per line, optional 'R G B' after it)")
    names, colours = [], []
    for line in classes_file.read_text().splitlines():
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=3)
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
            names.append(parts[0].strip())
            colours.append([int(p) for p in parts[1:]])
        else:
            names.append(line.strip())
    pal = colours if len(colours) == len(names) else generated_palette(len(names))
    img_dir, mask_dir = root / "images", root / "masks"
    if (img_dir / split).is_dir():
        img_dir, mask_dir = img_dir / split, mask_dir / split
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise DeployError(f"{root}: expected images/ and masks/ folders")
    images, masks = _stems(img_dir, IMAGE_EXTS), _stems(mask_dir, (".png",))
    missing = sorted(set(images) - set(masks))
    if missing:
        raise DeployError(f"{mask_dir}: no mask for {len(missing)} images, e.g. {missing[:3]}")
    pairs = [(images[n], masks[n]) for n in sorted(images)]
    if not pairs:
        raise DeployError(f"{img_dir}: no images")
    return SegDataset(f"folder:{root.name}", names, pal, pairs)


@dataclass
class DepthDataset:
    """(image, depth) file pairs; items are (image uint8 [H,W,3], depth float32 [H,W] metres, 0 = invalid)."""

    name: str
    pairs: list[tuple[Path, Path]]
    depth_scale: float = 1000.0  # stored units per metre
    class_names: list[str] = field(default_factory=list)
    palette: list[list[int]] = field(default_factory=list)
    n_classes: int = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        img_path, depth_path = self.pairs[i]
        image, depth = read_rgb(img_path), _read_depth(depth_path, self.depth_scale)
        if image.shape[:2] != depth.shape:
            raise DeployError(f"{img_path} is {image.shape[:2]} but its depth map {depth_path} is {depth.shape}")
        return image, depth


def _read_depth(path: Path, scale: float):
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("I;16", "I;16L", "I;16B", "I"):
                raise DeployError(f"{path}: a depth map must be a 16-bit single-channel PNG in millimetres (mode "
                                  f"{im.mode}; 8-bit images cannot hold millimetres)")
            raw = np.asarray(im).astype(np.float32)
    except OSError as exc:
        raise DeployError(f"cannot read depth map {path}: {exc}") from exc
    return raw / scale


NYU_SPLITS = {"train": ("train",), "val": ("test", "val")}


def nyu(root: str | os.PathLike, split: str = "train") -> DepthDataset:
    """NYU Depth v2 as PNG pairs, the layout of the common per-frame exports of the labelled set:

        root/train/**/NAME_rgb.png (or .jpg)   root/train/**/NAME_depth.png
        root/test/**/NAME_rgb.png              root/test/**/NAME_depth.png     (split "val"; or root/val)

    The depth PNG is 16-bit, in millimetres, 0 where the sensor has no reading (never trained or
    scored). Any folder depth under the split is searched (scene subfolders are fine). The images
    are used whole: no Eigen border crop is applied."""
    root = Path(root)
    subs = NYU_SPLITS.get(split, (split,))
    split_dir = next((root / s for s in subs if (root / s).is_dir()), None)
    if split_dir is None:
        raise DeployError(f"{root} is not an NYU folder: expected {' or '.join(str(root / s) for s in subs)} with "
                          "NAME_rgb.png + NAME_depth.png pairs")
    pairs, missing = [], []
    for img in sorted(p for p in split_dir.rglob("*_rgb.*") if p.suffix.lower() in IMAGE_EXTS):
        depth = img.with_name(img.name[: -len("_rgb" + img.suffix)] + "_depth.png")
        (pairs if depth.is_file() else missing).append((img, depth))
    if missing:
        raise DeployError(f"{split_dir}: no depth map for {len(missing)} images, e.g. {missing[0][1]} is missing")
    if not pairs:
        raise DeployError(f"{split_dir}: no NAME_rgb.png / NAME_depth.png pairs")
    return DepthDataset(f"nyu:{root.name}", pairs)


@dataclass
class ClsDataset(_Classes):
    """(image file, class index) pairs; items are (image uint8 [H,W,3], class index)."""

    name: str
    class_names: list[str]
    palette: list[list[int]]
    items: list[tuple[Path, int]]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        return read_rgb(path), label


def image_folder(root: str | os.PathLike, split: str = "train") -> ClsDataset:
    """ImageNet-style folders: root/<class>/*.jpg (every split reads the same files), or split as
    root/train/<class>/ and root/val/<class>/. Classes are the sorted folder names of the training
    split (so both splits number them the same); a class folder without images still counts."""
    root = Path(root)
    split_dirs = {s: root / s for s in ("train", "val") if (root / s).is_dir()}
    if split_dirs and split not in split_dirs:
        raise DeployError(f"{root} has split folders {sorted(split_dirs)} but no {root / split}")
    base = split_dirs.get(split, root)
    class_root = split_dirs.get("train", base)
    names = sorted(p.name for p in class_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DeployError(f"{class_root}: no class folders (expected {class_root}/<class>/<image>.jpg)")
    index = {n: i for i, n in enumerate(names)}
    extra = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in index)
    if extra:
        raise DeployError(f"{base}: classes {extra[:3]} are not among the training classes in {class_root}")
    items = [(p, index[d.name]) for d in sorted(base.iterdir()) if d.name in index
             for p in sorted(d.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    if not items:
        raise DeployError(f"{base}: no images in the class folders")
    return ClsDataset(f"imagefolder:{root.name}", names, generated_palette(len(names)), items)


DATA_KINDS = {"seg": ("synthetic", "ade20k", "folder"), "depth": ("synthetic", "nyu"),
              "cls": ("synthetic", "imagefolder")}


def open_dataset(spec: str, split: str = "train", *, synthetic_size: int | None = None, n_classes: int = 6,
                 task: str = "seg"):
    """A dataset of `task` from 'synthetic', 'synthetic:N' (N images) or KIND:PATH (DATA_KINDS).
    Synthetic splits use disjoint seeds (train 0.., val 1_000_000..); image sizes (train / val):
    seg 160x160 / 160x224, depth 160x192 / 160x224, cls 160x160 / 160x160."""
    kind, _, arg = spec.partition(":")
    kinds = DATA_KINDS.get(task)
    if kinds is None:
        raise DeployError(f"no datasets for task '{task}' (tasks: {', '.join(DATA_KINDS)})")
    if kind not in kinds or (kind != "synthetic" and not arg):
        known = {k for ks in DATA_KINDS.values() for k in ks}
        what = "unknown dataset" if kind not in known else f"not a {task} dataset"
        usage = " or ".join("synthetic[:N]" if k == "synthetic" else f"{k}:PATH" for k in kinds)
        raise DeployError(f"{what} '{spec}': use {usage} for --task {task}")
    if kind == "synthetic":
        # train: N images (else synthetic_size, else 256); other splits: synthetic_size, else N, else 24
        if split == "train":
            size = int(arg) if arg else (synthetic_size or 256)
        else:
            size = synthetic_size or (int(arg) if arg else 24)
        # Disjoint seeds: train images 0.., validation images 1_000_000..
        offset = 0 if split == "train" else 1_000_000
        if task == "depth":
            h, w = (160, 192) if split == "train" else (160, 224)
            return synthetic_depth(size, h, w, seed_offset=offset)
        if task == "cls":
            return synthetic_cls(size, 160, 160, n_classes=n_classes, seed_offset=offset)
        h, w = (160, 160) if split == "train" else (160, 224)
        return synthetic_seg(size, h, w, n_classes=n_classes, seed_offset=offset)
    if kind == "ade20k":
        return ade20k(arg, split)
    if kind == "folder":
        return folder(arg, split)
    if kind == "nyu":
        return nyu(arg, split)
    return image_folder(arg, split)

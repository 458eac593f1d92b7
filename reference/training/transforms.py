"""Training and evaluation transforms on numpy arrays (image uint8 [H,W,3] RGB), seeded by the
`numpy.random.Generator` passed in, so a sample's augmentation is a function of its seed alone (what
makes resume and multi-process training reproducible).

Segmentation (mask uint8 [H,W], 255 = ignore), the official pipeline (mmseg semantics of the DINOv3
linear protocol):

    random short-side scaling (ratio 0.5-2.0 of a base size) -> random crop with the category-ratio
    check (no class above 75% of the crop, up to 10 tries) -> horizontal flip (p 0.5) ->
    photometric distortion -> normalisation -> padding to the crop (image 0, mask 255)

Depth (float32 metres, 0 = no ground truth) and classification (a class index): see
DepthTrainTransform and ClsTrainTransform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..configs import NORMALIZATION
from .metrics import IGNORE_INDEX

IMAGENET_MEAN, IMAGENET_STD = NORMALIZATION["lvd1689m"]


def resize(image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]):
    """Resize to (h, w): image bilinear, mask nearest."""
    from PIL import Image

    h, w = size
    img = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    if mask is None:
        return img, None
    return img, np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))


def rescale_size(h: int, w: int, short: float, long: float) -> tuple[int, int]:
    """mmseg keep-ratio rescale to scale (long, short): the largest size with short side <= short
    and long side <= long."""
    f = min(long / max(h, w), short / min(h, w))
    return max(1, int(h * f + 0.5)), max(1, int(w * f + 0.5))


def random_resize(image, mask, rng: np.random.Generator, base_size: int, ratio=(0.5, 2.0), long_factor: int = 4):
    r = rng.uniform(*ratio)
    size = rescale_size(image.shape[0], image.shape[1], base_size * r, base_size * long_factor * r)
    return resize(image, mask, size)


def random_crop(image, mask, rng: np.random.Generator, crop: int, cat_max_ratio: float = 0.75, tries: int = 10):
    """A crop of at most crop x crop; re-drawn (up to `tries`) while one class covers more than
    cat_max_ratio of its labelled pixels (crops with a single class are always re-drawn)."""
    h, w = mask.shape
    ch, cw = min(crop, h), min(crop, w)

    def draw():
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        return y, x

    y, x = draw()
    if cat_max_ratio < 1.0:
        for _ in range(tries):
            labels, counts = np.unique(mask[y : y + ch, x : x + cw], return_counts=True)
            counts = counts[labels != IGNORE_INDEX]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y, x = draw()
    return image[y : y + ch, x : x + cw], mask[y : y + ch, x : x + cw]


def random_flip(image, mask, rng: np.random.Generator, p: float = 0.5):
    if rng.uniform() < p:
        return image[:, ::-1], mask[:, ::-1]
    return image, mask


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """float RGB in [0,255] -> H in [0,360), S in [0,1], V in [0,255]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = mx - mn
    safe = np.where(d == 0, 1, d)
    h = np.where(mx == r, (g - b) / safe % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    h = np.where(d == 0, 0, h)
    s = np.where(mx == 0, 0, d / np.where(mx == 0, 1, mx))
    return np.stack([h, s, mx], -1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of _rgb_to_hsv: channel n in (5, 3, 1) is v - v*s*clip(min(k, 4-k), 0, 1), k = (n + h/60) % 6."""
    h, s, v = hsv[..., 0:1] / 60, hsv[..., 1:2], hsv[..., 2:3]
    k = (np.array([5.0, 3.0, 1.0]) + h) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def photometric_distortion(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: float = 32,
    contrast_range=(0.5, 1.5),
    saturation_range=(0.5, 1.5),
    hue_delta: float = 18,
) -> np.ndarray:
    """mmseg PhotoMetricDistortion: random brightness, contrast (before or after the colour
    changes), saturation and hue, each applied with probability 0.5 (hue delta in OpenCV's
    0-180 units, i.e. 2 degrees each)."""
    img = image.astype(np.float32)
    if rng.integers(2):
        img = np.clip(img + rng.uniform(-brightness_delta, brightness_delta), 0, 255)
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        img = np.clip(img * rng.uniform(*contrast_range), 0, 255)
    do_sat, do_hue = bool(rng.integers(2)), bool(rng.integers(2))
    if do_sat or do_hue:
        hsv = _rgb_to_hsv(img)
        if do_sat:
            hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*saturation_range), 0, 1)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + 2 * rng.uniform(-hue_delta, hue_delta)) % 360
        img = np.clip(_hsv_to_rgb(hsv), 0, 255)
    if not contrast_first and rng.integers(2):
        img = np.clip(img * rng.uniform(*contrast_range), 0, 255)
    return img.astype(np.uint8)


def normalize_np(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 [H,W,3] -> float32 [H,W,3] normalised."""
    m = np.asarray(mean, dtype=np.float32) * 255
    s = np.asarray(std, dtype=np.float32) * 255
    return (image.astype(np.float32) - m) / s


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 [H,W,3] -> float32 [3,H,W] normalised."""
    return torch.from_numpy(np.ascontiguousarray(normalize_np(image, mean, std).transpose(2, 0, 1)))


def pad_to(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad image [h,w,C] (with 0) and mask [h,w] (with 255) at the bottom/right to size x size."""
    h, w = mask.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0)
        mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
    return image, mask


@dataclass(kw_only=True)
class CropTrainTransform:
    """What every dense training pipeline is set by: the crop, the short side it starts from,
    horizontal flips, photometric distortion and the normalisation."""

    crop: int = 512
    base_size: int = 512
    flip: float = 0.5
    photometric: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(kw_only=True)
class SegTrainTransform(CropTrainTransform):
    """The training pipeline; `__call__(image, mask, rng) -> (x [3,crop,crop] float32, mask [crop,crop] int64)`."""

    ratio: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        image, mask = random_resize(image, mask, rng, self.base_size, self.ratio)
        image, mask = random_crop(image, mask, rng, self.crop, self.cat_max_ratio)
        image, mask = random_flip(image, mask, rng, self.flip)
        if self.photometric:
            image = photometric_distortion(image, rng)
        # Padding after normalisation: padded pixels are 0 in the normalised image, as mmseg's data
        # preprocessor pads the normalised tensor.
        x, mask = pad_to(normalize_np(image, self.mean, self.std), mask, self.crop)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), torch.from_numpy(mask.astype(np.int64))


@dataclass
class ShortSideEvalTransform:
    """Resize so the short side is `size` (keep ratio, long side <= 4x), normalise; the target keeps
    its original size (predictions are resized back to it, so metrics are taken on its own pixels)."""

    size: int = 512
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    target_dtype: ClassVar[type] = np.int64

    def __call__(self, image: np.ndarray, target: np.ndarray):
        h, w = image.shape[:2]
        image, _ = resize(image, None, rescale_size(h, w, self.size, 4 * self.size))
        return normalize(image, self.mean, self.std), torch.from_numpy(np.array(target, dtype=self.target_dtype))


@dataclass
class SegEvalTransform(ShortSideEvalTransform):
    """Segmentation evaluation: the mask as int64 class ids."""

    target_dtype: ClassVar[type] = np.int64


# -- depth -------------------------------------------------------------------------------------------
def resize_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a depth map to (h, w): every value stays a measured depth (bilinear
    would invent depths between a foreground edge and the wall behind it, and blend in the 0s of
    missing readings)."""
    h, w = size
    ys = np.minimum(((np.arange(h) + 0.5) * depth.shape[0] / h).astype(np.int64), depth.shape[0] - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * depth.shape[1] / w).astype(np.int64), depth.shape[1] - 1)
    return depth[ys][:, xs]


@dataclass(kw_only=True)
class DepthTrainTransform(CropTrainTransform):
    """Depth training pipeline; `__call__(image, depth, rng) -> (x [3,crop,crop], depth [crop,crop] float32)`.

    short side resized to base_size -> random crop -> horizontal flip (p 0.5) -> photometric
    distortion -> normalisation -> padding to the crop (image 0, depth 0 = no ground truth).
    No random scaling: zooming a photograph does not change how far its surfaces are, so a scaled
    crop would teach the head that apparent size says nothing about metric depth."""

    def __call__(self, image: np.ndarray, depth: np.ndarray, rng: np.random.Generator):
        size = rescale_size(image.shape[0], image.shape[1], self.base_size, 4 * self.base_size)
        image, _ = resize(image, None, size)
        depth = resize_depth(np.asarray(depth, dtype=np.float32), size)
        h, w = depth.shape
        ch, cw = min(self.crop, h), min(self.crop, w)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image, depth = image[y : y + ch, x : x + cw], depth[y : y + ch, x : x + cw]
        if rng.uniform() < self.flip:
            image, depth = image[:, ::-1], depth[:, ::-1]
        if self.photometric:
            image = photometric_distortion(image, rng)
        x_img = normalize_np(image, self.mean, self.std)
        ph, pw = self.crop - ch, self.crop - cw
        x_img = np.pad(x_img, ((0, ph), (0, pw), (0, 0)))
        depth = np.pad(depth, ((0, ph), (0, pw)))
        return (torch.from_numpy(np.ascontiguousarray(x_img.transpose(2, 0, 1))),
                torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)))


@dataclass
class DepthEvalTransform(ShortSideEvalTransform):
    """Depth evaluation: the depth map in metres as float32 (0 = no measurement)."""

    target_dtype: ClassVar[type] = np.float32


# -- classification ------------------------------------------------------------------------------------
@dataclass
class ClsTrainTransform:
    """The linear-probe training pipeline: random resized crop (area 8-100 %, aspect 3/4-4/3, as
    torchvision's RandomResizedCrop draws it, falling back to a centre crop) to crop x crop ->
    horizontal flip (p 0.5) -> normalisation. `__call__(image, label, rng) -> (x, label int64)`."""

    crop: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def _box(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        area = h * w
        log_ratio = np.log(self.ratio)
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = float(np.exp(rng.uniform(*log_ratio)))
            cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
        s = min(h, w)
        return (h - s) // 2, (w - s) // 2, s, s

    def __call__(self, image: np.ndarray, label: int, rng: np.random.Generator):
        y, x, ch, cw = self._box(image.shape[0], image.shape[1], rng)
        image, _ = resize(np.ascontiguousarray(image[y : y + ch, x : x + cw]), None, (self.crop, self.crop))
        if rng.uniform() < self.flip:
            image = image[:, ::-1]
        return normalize(image, self.mean, self.std), torch.tensor(int(label), dtype=torch.int64)


@dataclass
class ClsEvalTransform:
    """Short side resized to `size`, centre crop of crop x crop (the crop is clamped to the resized
    image), normalised."""

    size: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, image: np.ndarray, label: int):
        h, w = image.shape[:2]
        image, _ = resize(image, None, rescale_size(h, w, self.size, 4 * self.size))
        h, w = image.shape[:2]
        ch, cw = min(self.crop, h), min(self.crop, w)
        y, x = (h - ch) // 2, (w - cw) // 2
        return normalize(image[y : y + ch, x : x + cw], self.mean, self.std), torch.tensor(int(label))

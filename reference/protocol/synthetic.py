"""Procedural segmentation and classification datasets that ship with the package: textured
shapes on textured ground, deterministic by seed, no downloads.

Every class has its own colour family and texture (streaks, waves, bricks, speckle, ...), so a
frozen backbone's features separate them and a linear head learns them in seconds; images carry
lighting gradients, soft noise and several overlapping shapes so they look like photographs more
than like test patterns (the export verifier uses them as parity inputs).

    image, mask = make_sample(seed=3, height=128, width=160)   # uint8 HxWx3, uint8 HxW
    image, label = make_cls_sample(seed=3, height=128, width=128)  # the same materials as classes
"""

from __future__ import annotations

import numpy as np

# name, base colour (RGB), texture
_CLASSES: tuple[tuple[str, tuple[int, int, int], str], ...] = (
    ("ground", (120, 92, 64), "noise"),
    ("grass", (70, 150, 50), "streaks"),
    ("water", (40, 90, 180), "waves"),
    ("brick", (170, 60, 45), "bricks"),
    ("sand", (215, 190, 130), "speckle"),
    ("metal", (150, 155, 165), "brushed"),
    ("foliage", (30, 85, 40), "dots"),
    ("fabric", (130, 60, 150), "checker"),
)
MAX_CLASSES = len(_CLASSES)


def class_names(n_classes: int = 6) -> list[str]:
    _check_n(n_classes)
    return [c[0] for c in _CLASSES[:n_classes]]


def palette(n_classes: int = 6) -> list[list[int]]:
    """Display colours per class (the class's base colour)."""
    _check_n(n_classes)
    return [list(c[1]) for c in _CLASSES[:n_classes]]


def _check_n(n_classes: int) -> None:
    if not 2 <= n_classes <= MAX_CLASSES:
        raise ValueError(f"the synthetic dataset has 2..{MAX_CLASSES} classes, got {n_classes}")


# -- textures: float maps around 0, roughly in [-1, 1] ---------------------------------------------
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise: a coarse random grid upsampled bilinearly."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = rng.uniform(-1, 1, size=(gh, gw))
    ys = np.linspace(0, gh - 1.001, h)
    xs = np.linspace(0, gw - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _fractal(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    out = np.zeros((h, w))
    amp = 1.0
    for _ in range(3):
        out += amp * _smooth_noise(rng, h, w, cell)
        cell, amp = max(cell / 2, 1.5), amp / 2
    return out / 1.75


def _texture(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == "noise":
        return _fractal(rng, h, w, rng.uniform(12, 24))
    if kind == "streaks":  # near-vertical blades
        ang = rng.uniform(-0.3, 0.3)
        u = xx * np.cos(ang) + yy * np.sin(ang)
        return 0.7 * np.sin(u * rng.uniform(0.9, 1.3) + 2 * _smooth_noise(rng, h, w, 6)) + 0.3 * _fractal(rng, h, w, 4)
    if kind == "waves":  # horizontal ripples
        return np.sin(yy * rng.uniform(0.35, 0.5) + 3 * _smooth_noise(rng, h, w, 20)) * 0.8
    if kind == "bricks":
        bh, bw = rng.integers(7, 10), rng.integers(14, 20)
        row = (yy // bh).astype(int)
        xs = xx + (row % 2) * bw / 2
        mortar = ((yy % bh) < 1.5) | ((xs % bw) < 1.5)
        return np.where(mortar, 1.2, -0.3 + 0.3 * _smooth_noise(rng, h, w, 5))
    if kind == "speckle":
        return 0.6 * rng.uniform(-1, 1, size=(h, w)) + 0.3 * _smooth_noise(rng, h, w, 16)
    if kind == "brushed":  # diagonal fine stripes with a sheen
        u = (xx + yy) * rng.uniform(1.2, 1.6)
        return 0.5 * np.sin(u) + 0.5 * _smooth_noise(rng, h, w, 30)
    if kind == "dots":
        period = rng.uniform(6, 9)
        d = np.hypot((xx % period) - period / 2, (yy % period) - period / 2)
        return np.where(d < period / 3.2, 0.8, -0.6) + 0.2 * _smooth_noise(rng, h, w, 8)
    if kind == "checker":
        c = rng.integers(5, 8)
        return np.where(((xx // c) + (yy // c)) % 2 == 0, 0.6, -0.6) + 0.15 * _smooth_noise(rng, h, w, 10)
    raise ValueError(kind)


def _paint(cls: int, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An h x w float RGB layer (0..255) of class `cls`: its colour, jittered, times its texture."""
    _, base, kind = _CLASSES[cls]
    colour = np.asarray(base, dtype=np.float64) * rng.uniform(0.85, 1.15) + rng.normal(0, 8, size=3)
    tex = _texture(kind, rng, h, w)
    return colour[None, None, :] * (1 + 0.28 * tex[..., None])


# -- shapes: boolean masks ---------------------------------------------------------------------------
def _shape(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    s = min(h, w)
    cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    kind = rng.choice(["ellipse", "rect", "polygon", "blob"])
    ang = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
    v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
    a, b = rng.uniform(0.12, 0.35) * s, rng.uniform(0.12, 0.35) * s
    if kind == "ellipse":
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    if kind == "rect":
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if kind == "polygon":  # convex: intersection of half-planes around the centre
        n = rng.integers(3, 7)
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
        inside = np.ones((h, w), dtype=bool)
        r = rng.uniform(0.15, 0.3) * s
        for t in angles:
            inside &= (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t) <= r
        return inside
    # blob: a circle with a noisy radius
    rr = np.hypot(u / a, v / a)
    return rr <= 1 + 0.45 * _smooth_noise(rng, h, w, s / 6)


def make_sample(seed: int, height: int, width: int, n_classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 [H,W,3], mask uint8 [H,W]) pair; the same seed gives the same pair.

    Class 0 (ground) fills the frame, a second class may take a band above a wavy horizon,
    then 2-5 shapes of the other classes are painted on top (later shapes occlude earlier).
    """
    _check_n(n_classes)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(height), int(width), int(n_classes)]))
    h, w = int(height), int(width)
    mask = np.zeros((h, w), dtype=np.uint8)
    image = _paint(0, rng, h, w)

    if rng.uniform() < 0.5:
        cls = int(rng.integers(1, n_classes))
        horizon = rng.uniform(0.2, 0.5) * h + 0.08 * h * _smooth_noise(rng, 1, w, w / 4)[0]
        region = np.arange(h)[:, None] < horizon[None, :]
        image = np.where(region[..., None], _paint(cls, rng, h, w), image)
        mask[region] = cls

    for _ in range(int(rng.integers(2, 6))):
        cls = int(rng.integers(1, n_classes))
        region = _shape(rng, h, w)
        image = np.where(region[..., None], _paint(cls, rng, h, w), image)
        mask[region] = cls

    return _photograph(image, rng), mask


def _photograph(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting: a smooth gradient and vignetting, then sensor noise; float RGB -> uint8."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    g = rng.uniform(-0.15, 0.15, size=2)
    light = 1 + g[0] * (yy / h - 0.5) + g[1] * (xx / w - 0.5)
    light -= 0.15 * ((yy / h - 0.5) ** 2 + (xx / w - 0.5) ** 2)
    image = image * light[..., None] + rng.normal(0, 4, size=(h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_cls_sample(seed: int, height: int, width: int, n_classes: int = 6) -> tuple[np.ndarray, int]:
    """One (image uint8 [H,W,3], label) pair for classification; label = seed % n_classes, so the
    classes are balanced over consecutive seeds.

    The class is the material (colour family and texture) of the object in the picture: 2-3
    overlapping shapes of the class cover the middle of the frame, on a neutral background (grey,
    slightly tinted value noise, no class's material), with at most one small distractor shape of
    another class.
    """
    _check_n(n_classes)
    label = int(seed) % n_classes
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(height), int(width), int(n_classes), 0xC1]))
    h, w = int(height), int(width)
    others = [c for c in range(n_classes) if c != label]
    grey = rng.uniform(90, 170) + rng.normal(0, 8, size=3)
    image = grey[None, None, :] * (1 + 0.2 * _fractal(rng, h, w, rng.uniform(10, 30))[..., None])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    obj = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(2, 4))):
        # an ellipse near the centre, big enough that the class dominates the picture
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        a, b = rng.uniform(0.2, 0.38) * w, rng.uniform(0.2, 0.38) * h
        obj |= ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
    image = np.where(obj[..., None], _paint(label, rng, h, w), image)
    if rng.uniform() < 0.3:
        small = _shape(rng, h, w)
        small &= np.hypot(yy - h / 2, xx - w / 2) > 0.3 * min(h, w)  # kept off the middle of the object
        image = np.where(small[..., None], _paint(int(rng.choice(others)), rng, h, w), image)
    return _photograph(image, rng), label

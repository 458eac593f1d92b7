"""Reading image files as uint8 RGB, the one reader the datasets and `infer` share.

`PIL.Image.convert("RGB")` alone is not enough: it ignores the EXIF orientation a phone writes (the
picture comes out sideways and no longer matches a mask drawn on the upright view), and it clips a
16-bit grayscale PNG to 255 (a white image) instead of scaling it. Every mode the listed formats
produce is therefore mapped to RGB explicitly:

    RGB                       as is
    1, L                      grey repeated on three channels
    I;16 (16-bit PNG), I      scaled to 0..255 (x / 257, rounded), then as L
    RGBA, LA, PA, P           alpha DROPPED, colours kept as stored (not composited on any
                              background): what `convert("RGB")` and the release's loaders do
    CMYK, YCbCr (JPEG)        PIL's colour conversion

A 16-bit RGB(A) PNG reaches us as 8-bit already (PIL keeps the high byte of each sample).
Any other mode (float images, ...) is refused rather than guessed.
"""

from __future__ import annotations

import os
from pathlib import Path

from dinov3_deploy.errors import DeployError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

_GREY_16 = ("I;16", "I;16L", "I;16B", "I")
_ALPHA = {"RGBA": "RGB", "LA": "L", "PA": "RGB"}
_PIL_CONVERTS = ("CMYK", "YCbCr", "P")


def is_image(path: str | os.PathLike) -> bool:
    """True for a file name with one of IMAGE_EXTS (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTS


def read_rgb(path: str | os.PathLike):
    """The image at `path` as a uint8 numpy array [H, W, 3], upright per its EXIF orientation.

    Raises DeployError naming the file and the reason when it cannot be read or decoded."""
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()  # decode now so a truncated file fails here, inside the try
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode in _ALPHA:
                im = im.convert(_ALPHA[mode])
            elif mode in _PIL_CONVERTS:
                # A palette with transparency converts as RGB: its alpha is dropped like RGBA's.
                im = im.convert("RGB")
            elif mode == "1":
                im = im.convert("L")
            elif mode in _GREY_16:
                wide = np.asarray(im, dtype=np.int64)
                grey = ((np.clip(wide, 0, 65535) + 128) // 257).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
            elif im.mode not in ("L", "RGB"):
                raise DeployError(f"cannot read image {path}: pixel mode {im.mode} has no defined RGB meaning")
            pixels = np.asarray(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # OSError covers missing files, unknown formats (UnidentifiedImageError) and truncated data.
        raise DeployError(f"cannot read image {path}: {exc}") from exc
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return np.ascontiguousarray(pixels, dtype=np.uint8)

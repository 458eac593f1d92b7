"""Which images a run reads, and what each one's outputs are called: files, or folders read recursively,
named by their path relative to the folder given (extension included), so that `a.jpg` and `a.png`
never write the same files; clashes are refused before any work."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dinov3_deploy.errors import DeployError
from dinov3_deploy.reference.protocol.images import IMAGE_EXTS, is_image


@dataclass(frozen=True)
class ImageInput:
    """One image to run: `name` is its path relative to the folder argument it came from (the
    file name for a file argument), posix, extension included; outputs are named after it."""

    name: str
    source: Path | np.ndarray



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

"""Content hashes of the files an artifact or a head checkpoint depends on.

A head records the backbone weights it was trained on, an artifact the weights and head it was
exported from; each later use checks the hash, so a moved file is still found and a changed one
is never used silently. Weights may be one file or a Hugging Face folder (several files)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted), so an HF
    folder has one digest like a single checkpoint file."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(f.relative_to(p).as_posix().encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()

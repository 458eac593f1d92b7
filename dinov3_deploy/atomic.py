"""Atomic writes: every file and directory this tool writes appears complete or not at all, with
the permissions a plain `open()` / `mkdir()` would give, and nothing a user owns is replaced.

A crash, a full disk or Ctrl-C in the middle of a write must not leave half a checkpoint, half an
artifact or a truncated JSON that a later run trusts. So everything is written under a temporary
name in the target's own directory (same filesystem: `os.replace` is one atomic rename) and
renamed onto the target only when complete.

Replacing an existing directory is the dangerous case (`--overwrite` on `--out .` once deleted a
user's notes): `atomic_dir` replaces one only when the caller's `ours` check names no file the tool
did not write; otherwise it refuses and lists what would be lost.

    atomic_write(path, lambda tmp: save_file(tensors, tmp))
    write_json(path, data)
    with atomic_dir(target, overwrite=True, ours=artifact_foreign_files) as tmp:
        ...  # fill tmp; it is renamed onto target on success, removed on any exception
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from dinov3_deploy.errors import DeployError

#: `ours(path) -> files under path this tool did not write` (relative posix paths; [] = all ours)
OwnershipCheck = Callable[[Path], list[str]]


class TargetExistsError(DeployError):
    """The target exists and is not replaced (no overwrite asked for, or not ours to replace)."""


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call write(tmp_path) then rename onto path, so a failure never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give what a plain open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | os.PathLike, data, indent: int | None = 2) -> None:
    write_text(path, json.dumps(data, indent=indent) + "\n")


def listing(path: Path, limit: int = 5) -> str:
    """'a.txt, b/c.txt, ... (N files)' for error messages."""
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir())
    shown = ", ".join(files[:limit]) + (" ..." if len(files) > limit else "")
    return f"{shown} ({len(files)} file{'s' if len(files) != 1 else ''})"


def check_replaceable(path: Path, overwrite: bool, ours: OwnershipCheck | None, what: str,
                      error: type[DeployError] = TargetExistsError) -> None:
    """Raise TargetExistsError unless `path` is absent, an empty directory, or (with overwrite) a
    `what` that `ours` vouches for file by file."""
    if not path.exists():
        return
    if path.is_dir() and not any(path.iterdir()):
        return
    if not path.is_dir():
        raise error(f"{path} is a file, not {what} directory; choose another output path")
    if not overwrite:
        raise error(f"{path} already exists; pass --overwrite to replace it, or choose another output")
    foreign = ours(path) if ours is not None else None
    if foreign is None:
        raise error(
            f"{path} is not {what} written by dinov3-deploy, so --overwrite will not replace it "
            f"(it holds {listing(path)}); choose another output path")
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise error(
            f"{path} holds files dinov3-deploy did not write ({shown}); --overwrite would lose them: "
            "move them away or choose another output path")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False, ours: OwnershipCheck | None = None,
               what: str = "an output", error: type[DeployError] = TargetExistsError) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` in one rename.

    An existing non-empty `path` is replaced only with `overwrite` and when `ours(path)` returns
    [] (every file in it was written by this tool); `ours` returning None means "not ours at all".
    The check runs before the body, so a refusal costs no work."""
    path = Path(path).resolve()
    check_replaceable(path, overwrite, ours, what, error)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        check_replaceable(path, overwrite, ours, what, error)  # something may have appeared meanwhile
        mask = umask()
        for f in tmp.rglob("*"):
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

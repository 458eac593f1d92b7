"""The deployment artifact: a directory written under a temporary name and renamed only when
complete, described by `manifest.json` (the typed Manifest of dinov3_deploy/manifest.py, with the
sha256 of every file).

    with ArtifactWriter(out_dir) as w:          # .<name>.partial-XXXX beside out_dir
        export_onnx(module, w.path / "model.onnx", shapes)
        w.finish(manifest)                      # hashes files, writes the manifest, renames
    art = load_artifact(out_dir)                # checks schema and hashes -> Artifact
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from dinov3_deploy.atomic import atomic_dir, write_json
from dinov3_deploy.errors import ArtifactError
from dinov3_deploy.hashing import sha256_file
from dinov3_deploy.manifest import MANIFEST, SCHEMA, SCHEMA_VERSION, FileEntry, Manifest, read_manifest

__all__ = ["MANIFEST", "SCHEMA", "SCHEMA_VERSION", "Artifact", "ArtifactWriter", "load_artifact"]

ONNX_NAME = "model.onnx"
ENGINE_NAME = "model.engine"
PARITY_NAME = "parity.json"


def toolchain_versions() -> dict:
    """Versions of everything that shaped the artifact (None when not installed)."""
    from importlib import metadata

    import dinov3_deploy

    versions = {"dinov3_deploy": dinov3_deploy.__version__, "python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxscript", "onnxruntime", "polygraphy", "tensorrt", "tensorrt_rtx",
                 "tensorrt-rtx-cu13", "tensorrt-cu13"):
        try:
            versions[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)


def hash_files(root: Path) -> dict[str, FileEntry]:
    """{relative posix path: FileEntry} of every file under root except the manifest."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {rel: file_entry(f) for f in files if (rel := f.relative_to(root).as_posix()) != MANIFEST}


def foreign_files(root: Path) -> list[str] | None:
    """Files under `root` that its manifest does not list ([] for a pristine artifact of ours),
    or None when `root` is not a dinov3-deploy artifact at all. Reads only `schema` and `files`,
    not the typed Manifest: an artifact of any schema version is ours to replace."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        return None
    listed = set(manifest.get("files") or {}) | {MANIFEST}
    return sorted(rel for p in root.rglob("*") if p.is_file() and (rel := p.relative_to(root).as_posix()) not in listed)


class ArtifactWriter:
    """Context manager owning a temporary directory beside `target`; `finish()` writes the
    manifest and renames it to `target`. Any exception (or no finish) removes it: never a half
    artifact. An existing target is replaced only when `overwrite`. The temp-and-rename is
    dinov3_deploy.atomic.atomic_dir, which replaces an existing directory only when it is an
    artifact and holds nothing but the files its manifest lists."""

    def __init__(self, target: str | os.PathLike, overwrite: bool = False) -> None:
        self.target = Path(target).resolve()
        self.overwrite = overwrite
        self.path: Path | None = None
        self._dir = None

    def __enter__(self) -> ArtifactWriter:
        self._dir = atomic_dir(self.target, overwrite=self.overwrite, ours=foreign_files, what="an artifact",
                               error=ArtifactError)
        self.path = self._dir.__enter__()
        return self

    def finish(self, manifest: Manifest) -> Path:
        assert self.path is not None and self._dir is not None
        dataclasses.replace(manifest, files=hash_files(self.path)).write(self.path)
        self._dir.__exit__(None, None, None)  # renames onto target
        self._dir = None
        return self.target

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._dir is not None:  # an exception, or no finish(): the temporary directory goes
            self._dir.__exit__(exc_type or RuntimeError, exc or RuntimeError("artifact not finished"), tb)
            self._dir = None


@dataclass
class Artifact:
    path: Path
    manifest: Manifest

    @property
    def onnx_path(self) -> Path:
        return self.path / self.manifest.onnx.file

    @property
    def engine_path(self) -> Path | None:
        trt = self.manifest.tensorrt
        return self.path / trt.file if trt else None

    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def task(self) -> str:
        return self.manifest.task

    def shapes(self):
        return self.manifest.input.shapes

    def write_parity(self, report: dict) -> None:
        """Replace parity.json and its hash in the manifest (the one file verify owns)."""
        write_json(self.path / PARITY_NAME, report)
        self.manifest.files[PARITY_NAME] = file_entry(self.path / PARITY_NAME)
        self.manifest.write(self.path)


def load_artifact(path: str | os.PathLike, check_hashes: bool = True) -> Artifact:
    """Read and validate an artifact directory; ArtifactError says what is wrong and what to do."""
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root} is not an artifact directory (run `dinov3-deploy export --out {root}`)")
    manifest = read_manifest(root)
    if not manifest.files:
        raise ArtifactError(f"{root / MANIFEST} lists no files; re-export the artifact")
    if check_hashes:
        for rel, entry in manifest.files.items():
            f = root / rel
            if not f.is_file():
                raise ArtifactError(f"{root}: {rel} listed in the manifest is missing; re-export the artifact")
            if f.stat().st_size != entry.bytes or sha256_file(f) != entry.sha256:
                raise ArtifactError(
                    f"{root}: {rel} does not match its sha256 in the manifest (modified or corrupted); "
                    "re-export the artifact"
                )
    return Artifact(root, manifest)

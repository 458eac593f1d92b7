"""The deployment artifact: a directory written under a temporary name and renamed only when
complete, described by `manifest.json` (schema-versioned, sha256 of every file).

    with ArtifactWriter(out_dir) as w:          # .<name>.partial-XXXX beside out_dir
        export_onnx(module, w.path / "model.onnx", shapes)
        w.finish(manifest)                      # hashes files, writes the manifest, renames
    art = load_artifact(out_dir)                # checks schema and hashes -> Artifact
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from dinov3_deploy.atomic import atomic_dir, write_json
from dinov3_deploy.errors import ArtifactError
from dinov3_deploy.model_source import sha256_file

SCHEMA = "dinov3-deploy-artifact"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
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


def hash_files(root: Path) -> dict[str, dict]:
    """{relative posix path: {sha256, bytes}} of every file under root except the manifest."""
    out = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        out[rel] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    return out


def foreign_files(root: Path) -> list[str] | None:
    """Files under `root` that its manifest does not list ([] for a pristine artifact of ours),
    or None when `root` is not a dinov3-deploy artifact at all."""
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

    def finish(self, manifest: dict) -> Path:
        assert self.path is not None and self._dir is not None
        manifest = dict(manifest, schema=SCHEMA, schema_version=SCHEMA_VERSION, files=hash_files(self.path))
        write_json(self.path / MANIFEST, manifest)
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
    manifest: dict

    @property
    def onnx_path(self) -> Path:
        return self.path / self.manifest["onnx"]["file"]

    @property
    def engine_path(self) -> Path | None:
        trt = self.manifest.get("tensorrt")
        return self.path / trt["file"] if trt else None

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    def shapes(self):
        from dinov3_deploy.shapes import ShapeSpec

        return ShapeSpec.from_dict(self.manifest["input"]["shapes"])

    def write_parity(self, report: dict) -> None:
        """Replace parity.json and its hash in the manifest (the one file verify owns)."""
        write_json(self.path / PARITY_NAME, report)
        self.manifest.setdefault("files", {})[PARITY_NAME] = {
            "sha256": sha256_file(self.path / PARITY_NAME), "bytes": (self.path / PARITY_NAME).stat().st_size}
        write_json(self.path / MANIFEST, self.manifest)


def load_artifact(path: str | os.PathLike, check_hashes: bool = True) -> Artifact:
    """Read and validate an artifact directory; ArtifactError says what is wrong and what to do."""
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root} is not an artifact directory (run `dinov3-deploy export --out {root}`)")
    mpath = root / MANIFEST
    if not mpath.exists():
        raise ArtifactError(f"{root} has no {MANIFEST}: not a dinov3-deploy artifact, or an incomplete one")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{mpath} is not valid JSON ({exc}); re-export the artifact") from exc
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise ArtifactError(f"{mpath} is not a {SCHEMA} manifest (schema={manifest.get('schema')!r})")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise ArtifactError(
            f"{root} uses artifact schema version {version!r}, this dinov3-deploy reads version {SCHEMA_VERSION}: "
            + ("upgrade dinov3-deploy" if newer else "re-export it with this version")
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{mpath} lists no files; re-export the artifact")
    if check_hashes:
        for rel, entry in files.items():
            f = root / rel
            if not f.is_file():
                raise ArtifactError(f"{root}: {rel} listed in the manifest is missing; re-export the artifact")
            if f.stat().st_size != entry.get("bytes") or sha256_file(f) != entry.get("sha256"):
                raise ArtifactError(
                    f"{root}: {rel} does not match its sha256 in the manifest (modified or corrupted); "
                    "re-export the artifact"
                )
    return Artifact(root, manifest)

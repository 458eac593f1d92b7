"""The artifact manifest (`manifest.json`) as one typed structure, written and read only here.

A C++ program deploys from the manifest and the engine alone, and verify, bench, infer, inspect
and the Triton repository all read it: when each of them read the JSON by key paths, they drifted
apart (bench rebuilt the I/O contract without the extra feature outputs, so it never compared
them). Here every field has a type, `Manifest.io` is the one I/O contract every reader uses, and
`manifest.schema.json` beside this module publishes the same structure (a test validates every
manifest the test suite writes against it, and checks the schema names exactly these fields).

    m = Manifest(task=..., precision=..., backbone=BackboneInfo(...), ...)
    m.write(root)                            # root/manifest.json
    m = read_manifest(root)                  # schema and version checked -> Manifest
    m.io.uint8_input, m.input.shapes.batch.max, m.tensorrt.flavor if m.tensorrt else None

Schema history: version 1 was the untyped dict; version 2 is this structure (head fields under
`head`, the reference head spec under `head.spec`, `tensorrt.timing_cache` named); version 3 adds
multi-head artifacts (task "multi", one `heads` entry per task with its outputs and classes) and
names each head's task. Version 2 manifests still read (their new fields take the defaults).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinov3_deploy.atomic import write_json
from dinov3_deploy.errors import ArtifactError
from dinov3_deploy.head_outputs import output_name
from dinov3_deploy.shapes import ShapeSpec

SCHEMA = "dinov3-deploy-artifact"
SCHEMA_VERSION = 3
READABLE_VERSIONS = (2, 3)  # 2 lacks only fields that have defaults here
MULTI_TASK = "multi"  # the task of a multi-head artifact; its tasks are the heads'
MANIFEST = "manifest.json"
SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")
# The graph's input name for each input dtype.
INPUT_NAMES = {"float32": "pixel_values", "uint8": "image"}


def _imagenet() -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    from dinov3_deploy.reference.configs import IMAGENET_MEAN, IMAGENET_STD

    return IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class DeployIO:
    """The I/O contract of the deployed graph: what verify, bench and infer must feed it and what
    the fp32 reference must compute to compare with it."""

    uint8_input: bool = False  # uint8 NHWC RGB normalised in the graph; else normalised fp32 NCHW
    seg_output: str = "logits"  # seg: "probs" / "labels" outputs added after the logits
    feature_layers: int = 0  # features on ViT: patch tokens of the last N blocks (N-1 extra outputs)
    # default: the ImageNet statistics (reference/configs.py), imported only when used: the manifest
    # module stays free of torch, which the reference package imports
    mean: tuple[float, float, float] = field(default_factory=lambda: _imagenet()[0])
    std: tuple[float, float, float] = field(default_factory=lambda: _imagenet()[1])


@dataclass(kw_only=True)
class BackboneInfo:
    name: str
    family: str
    embed_dim: int
    patch_size: int
    input_multiple: int
    weights: str | None
    random_weights: bool


@dataclass(kw_only=True)
class Classes:
    """Class names and their RGB palette, index = class id."""

    names: list[str]
    palette: list[list[int]]


@dataclass(kw_only=True)
class HeadInfo:
    task: str | None = None  # None only in schema-2 manifests (the manifest's task then)
    outputs: list[str] = field(default_factory=list)  # the graph outputs this head produces
    classes: Classes | None = None  # a multi-head artifact's seg/cls classes (single-head: the manifest's)
    head_type: str
    layers: str
    n_classes: int
    checkpoint: str | None
    random_weights: bool
    spec: dict[str, Any]  # the reference HeadSpec as it serialises itself (reference/ owns its fields)

    def __post_init__(self) -> None:
        self.spec = _dump(self.spec)  # JSON types (tuples -> lists), so a written manifest reads back equal


@dataclass(kw_only=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_graph: bool

    def __post_init__(self) -> None:
        self.mean, self.std = tuple(map(float, self.mean)), tuple(map(float, self.std))


@dataclass(kw_only=True)
class InputSpec:
    name: str
    dtype: str
    layout: str
    color: str
    normalize: Normalization
    value_range: str
    resize: str
    shapes: ShapeSpec


@dataclass(kw_only=True)
class TensorInfo:
    name: str
    dtype: str
    shape: list[int | str]


@dataclass(kw_only=True)
class OutputSpec(TensorInfo):
    doc: str
    stride: int | None = None  # input pixels per cell of its spatial grid, where recorded (M2F: masks 4, scores 1)


@dataclass(kw_only=True)
class OutputsConfig:
    """The export options that added outputs to the graph."""

    seg_output: str = "logits"  # "probs" / "labels" add upsampled outputs after the seg logits
    feature_layers: int = 0  # features: patch tokens of the last N blocks


@dataclass(kw_only=True)
class GraphInfo:
    opset: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    nodes: int
    op_counts: dict[str, int]
    fp32_islands: dict[str, dict[str, int]]
    compute_dtypes: dict[str, int]


@dataclass(kw_only=True)
class OnnxInfo:
    file: str
    files: list[str]
    opset: int
    plugins: list[str]
    external_data: bool
    exporter: str
    export_example_shape: list[int]
    graph: GraphInfo


@dataclass(kw_only=True)
class EngineProfile:
    input: str
    min: list[int]
    opt: list[int]
    max: list[int]


@dataclass(kw_only=True)
class EngineTensor:
    name: str
    mode: str
    dtype: str
    shape: list[int]


@dataclass(kw_only=True)
class TensorRTInfo:
    file: str
    flavor: str
    version: str
    targets: list[str]
    strongly_typed: bool
    builder_optimization_level: int
    workspace_bytes: int
    profiles: list[EngineProfile]
    io: list[EngineTensor]
    network_layers: int
    engine_bytes: int
    build_seconds: float
    build_log: list[str]
    timing_cache: str | None = None

    @classmethod
    def from_facts(cls, file: str, facts: dict) -> TensorRTInfo:
        """From engines.build's BuiltEngine.facts (a fact this type does not know is an error: the
        manifest and its schema must grow with the builder)."""
        return _load(cls, {"file": file, **facts}, "tensorrt")


@dataclass(kw_only=True)
class TritonModel:
    """One model of the Triton Inference Server repository (its folder name and backend)."""

    name: str
    backend: str


@dataclass(kw_only=True)
class TritonInfo:
    """The Triton Inference Server model repository written beside the artifact."""

    dir: str
    models: list[TritonModel]
    notes: list[str]


@dataclass(kw_only=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(kw_only=True)
class FoldInfo:
    """An exact weight rewrite made before export (reference/models/fold.py): `source` merged into `target`."""

    kind: str
    source: str
    target: str


@dataclass(kw_only=True)
class KeptLayer:
    """A matmul an int8 / fp8 graph keeps in fp32, and its measured sensitivity: the output's relative
    error on the calibration images with that layer alone quantized (export/sensitivity.py)."""

    layer: str
    sensitivity: float | None


@dataclass(kw_only=True)
class QuantizationInfo:
    """How an int8 / fp8 graph was quantized (export/quant_step.py): the calibration method chosen and
    each method's score, the calibration set's sha256, the layers kept in fp32 and the share of matmul
    FLOPs that runs quantized."""

    precision: str
    calibration_method: str
    method_scores: dict[str, Any]
    calibration_hash: str
    calibration_images: int
    calibration_shape: list[int]
    smoothing_alpha: float
    smoothed: int
    kept_layers: list[KeptLayer]
    quantized_layers: int
    quantized_flop_share: float
    calibration_score: dict[str, Any]
    search_thresholds: dict[str, Any]
    seconds: float
    layer_methods: dict[str, str] = field(default_factory=dict)  # quantized layers calibrated otherwise

    @classmethod
    def from_report(cls, report) -> QuantizationInfo:
        d = report.to_dict()
        d.pop("sensitivity", None)  # every layer's: the kept ones carry theirs
        d["kept_layers"] = [KeptLayer(**k) for k in d["kept_layers"]]
        return cls(**d)


@dataclass(kw_only=True)
class IslandInfo:
    """A module kept in fp32 in a low-precision graph (export/calibration.py), the reason, and the
    max |output| measured on the calibration images (None when the reason is not a range; for
    "scores", where only an attention's score matmul is fp32, the max |q*scale @ k^T|)."""

    module: str
    reason: str
    absmax: float | None


@dataclass(kw_only=True)
class Manifest:
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION
    created_utc: str
    task: str
    precision: str
    backbone: BackboneInfo
    head: HeadInfo | None  # single-task artifacts (None for features and multi)
    heads: list[HeadInfo] = field(default_factory=list)  # multi: one per task, in output order
    source: dict[str, Any]  # ModelSource.to_manifest(): how verify rebuilds the reference
    input: InputSpec
    outputs: list[OutputSpec]
    outputs_config: OutputsConfig
    classes: Classes | None
    onnx: OnnxInfo
    tensorrt: TensorRTInfo | None = None
    triton: TritonInfo | None = None
    toolchain: dict[str, str]
    notes: list[str] = field(default_factory=list)
    folds: list[FoldInfo] = field(default_factory=list)
    fp32_islands: list[IslandInfo] = field(default_factory=list)
    quantization: QuantizationInfo | None = None  # int8 / fp8 only
    export_seconds: float | None = None
    files: dict[str, FileEntry] = field(default_factory=dict)

    @property
    def multi(self) -> bool:
        """Several heads: outputs named "<task>.<output>", heads and classes under `heads`."""
        return self.task == MULTI_TASK

    def _parts(self) -> list[tuple[str, HeadInfo | None, Classes | None]]:
        """(task, head, classes) of each head: the general (multi-head) view, of which a single-task
        artifact is the one-part case (the file keeps its head and classes at the top level)."""
        if self.multi:
            return [(h.task, h, h.classes) for h in self.heads]
        return [(self.task, self.head, self.classes)]

    @property
    def tasks(self) -> list[str]:
        """The tasks the graph computes: the heads' for a multi-head artifact, else the one task."""
        return [task for task, _, _ in self._parts()]

    def head_for(self, task: str) -> HeadInfo | None:
        """The head computing `task` (None for features and for a task the graph does not compute)."""
        return next((head for t, head, _ in self._parts() if t == task), None)

    def classes_for(self, task: str) -> Classes | None:
        """Class names and palette of a seg/cls task."""
        return next((classes for t, _, classes in self._parts() if t == task), None)

    def output_name(self, task: str, name: str) -> str:
        """The graph output `name` ("logits", "depth", ...) of `task`: "seg.logits" in a multi-head
        graph, "logits" in a single-task one."""
        return output_name(task, name, self.multi)

    @property
    def io(self) -> DeployIO:
        return DeployIO(uint8_input=self.input.dtype == "uint8", seg_output=self.outputs_config.seg_output,
                        feature_layers=self.outputs_config.feature_layers,
                        mean=tuple(self.input.normalize.mean), std=tuple(self.input.normalize.std))

    def to_dict(self) -> dict:
        return _dump(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = MANIFEST) -> Manifest:
        """Check schema name and version, then every field's presence and type (ArtifactError)."""
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            schema = d.get("schema") if isinstance(d, dict) else None
            raise ArtifactError(f"{where} is not a {SCHEMA} manifest (schema={schema!r})")
        version = d.get("schema_version")
        if version not in READABLE_VERSIONS:
            if isinstance(version, int) and version > SCHEMA_VERSION:
                raise ArtifactError(
                    f"{where} uses artifact schema version {version}, newer than the version {SCHEMA_VERSION} this "
                    "dinov3-deploy reads: upgrade dinov3-deploy (pip install -U dinov3-deploy)")
            raise ArtifactError(
                f"{where} uses artifact schema version {version!r}, older than the versions "
                f"{READABLE_VERSIONS[0]}-{SCHEMA_VERSION} this dinov3-deploy reads: re-export the artifact with this "
                "version")
        return _load(cls, d, "")

    def write(self, root: str | os.PathLike) -> Path:
        """Write root/manifest.json atomically (the one writer: tests validate through it)."""
        path = Path(root) / MANIFEST
        write_json(path, self.to_dict())
        return path


def head_fields(heads: list[HeadInfo], multi: bool) -> dict[str, Any]:
    """The Manifest fields that hold `heads` (one per task, features included, each with its
    classes): a multi-head artifact lists them under `heads`; a single-task one, the one-part case,
    keeps its head under `head` (none for features) and its classes at the top level (schema 2's
    layout, which schema 3 kept)."""
    if multi:
        return {"head": None, "heads": heads, "classes": None}
    (one,) = heads
    head = None if one.task == "features" else dataclasses.replace(one, classes=None)
    return {"head": head, "heads": [], "classes": one.classes}


def read_manifest(root: str | os.PathLike) -> Manifest:
    """root/manifest.json -> Manifest; ArtifactError says what is wrong and what to do."""
    mpath = Path(root) / MANIFEST
    if not mpath.exists():
        raise ArtifactError(f"{root} has no {MANIFEST}: not a dinov3-deploy artifact, or an incomplete one")
    try:
        data = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{mpath} is not valid JSON ({exc}); re-export the artifact") from exc
    return Manifest.from_dict(data, where=str(mpath))


def load_schema() -> dict:
    """The published JSON Schema (draft 2020-12) of manifest.json."""
    return json.loads(SCHEMA_FILE.read_text())


# -- one generic (de)serialiser driven by the type hints above ----------------------------------
def _dump(value: Any) -> Any:
    if isinstance(value, ShapeSpec):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _dump(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


_SCALARS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _bad(where: str, want: str, value: Any) -> ArtifactError:
    return ArtifactError(f"manifest field {where or '(top level)'} must be {want}, got {value!r:.80}; "
                         "re-export the artifact")


def _load(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        if value is None and type(None) in members:
            return None
        errors = []
        for m in members:
            if m is type(None):
                continue
            try:
                return _load(m, value, where)
            except ArtifactError as exc:
                errors.append(exc)
        raise errors[0]
    if tp is ShapeSpec:
        try:
            return ShapeSpec.from_dict(value)
        except Exception as exc:  # noqa: BLE001 - any malformed range is the same user-facing problem
            raise _bad(where, "{batch, height, width: [min, opt, max], multiple}", value) from exc
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ArtifactError(f"manifest field {where or '(top level)'} has unknown entries {unknown}; "
                                "re-export the artifact with this dinov3-deploy")
        kwargs = {}
        for name, f in fields.items():
            sub = f"{where}.{name}" if where else name
            if name not in value:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ArtifactError(f"manifest field {sub} is missing; re-export the artifact")
                continue
            kwargs[name] = _load(hints[name], value[name], sub)
        return tp(**kwargs)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _bad(where, "a list", value)
        item = typing.get_args(tp)[0]
        out = [_load(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        _, item = typing.get_args(tp)
        return {k: _load(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(where, _SCALARS[tp], value)
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise _bad(where, _SCALARS[tp], value)
        return value
    raise TypeError(f"manifest type {tp!r} at {where} has no loader")  # a programming error, not a user's

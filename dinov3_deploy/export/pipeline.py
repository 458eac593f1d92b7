"""`export`: checkpoint -> reference model -> ONNX (-> TensorRT engine) (-> Triton repository)
-> parity report -> manifest, all inside a temporary directory renamed only when complete.

    export_artifact(ExportOptions(task="seg", out="out/seg"), progress)
"""

from __future__ import annotations

import importlib.util
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinov3_deploy.artifact import ENGINE_NAME, ONNX_NAME, PARITY_NAME, Artifact, ArtifactWriter, toolchain_versions
from dinov3_deploy.atomic import write_json
from dinov3_deploy.engines.plugins import ATTENTION_PLUGIN, MS_DEFORM_ATTN_PLUGIN
from dinov3_deploy.errors import DeployError
from dinov3_deploy.head_outputs import output_doc, output_stride
from dinov3_deploy.manifest import (
    INPUT_NAMES,
    BackboneInfo,
    Classes,
    FoldInfo,
    HeadInfo,
    InputSpec,
    IslandInfo,
    Manifest,
    Normalization,
    OnnxInfo,
    OutputsConfig,
    OutputSpec,
    QuantizationInfo,
    TensorRTInfo,
    head_fields,
)
from dinov3_deploy.model_source import ModelSource, MultiSource
from dinov3_deploy.shapes import DimRange, ShapeSpec, parse_static
from dinov3_deploy.verification.parity import ParityError

FORMATS = ("onnx", "trt", "triton-repo")
DEFAULT_MODEL = "vits16"  # the smallest released ViT: the embedded default

class Progress:
    """No-op progress; the CLI passes a rich one. `step` wraps a phase, `log` updates its detail."""

    def step(self, text: str):
        return nullcontext()

    def log(self, text: str) -> None:
        pass


@dataclass
class ExportOptions:
    out: str | Path
    task: str | None = None  # a task, or comma-separated tasks for random heads; None: the heads', else "seg"
    model: str | None = None
    weights: str | None = None
    head: str | list[str] | tuple[str, ...] | None = None  # head checkpoint(s); several make a multi-head artifact
    n_classes: int = 0
    layers: str = "last"
    seed: int = 0
    random_init: str = "release-like"  # a random backbone's init; "outliers" stress-tests low precision
    random_backbone_ok: bool = False  # --random-init given: Meta's M2F head file (no backbone) may sit on a random one
    deform_attn: str = "onnx"  # M2F deformable attention: "onnx" (standard ops, GridSample per level) | "plugin"
    precision: str = "fp32"
    opset: int | None = None  # None: the lowest that works (deploy_module.DEFAULT_OPSET), within TensorRT 10.0's
    calib: str | None = None  # folder of calibration images for fp16/bf16 (default: built-in synthetic ones)
    formats: tuple[str, ...] = ("onnx",)
    batch: str = "1:1:8"
    height: str = "256:512:1024"
    width: str | None = None  # defaults to height's range
    static: str | None = None  # "HxW": fixed resolution (batch stays as --batch says)
    seg_output: str = "logits"
    uint8_input: bool = False
    feature_layers: int = 0  # features on ViT: also the normalised patch tokens of the blocks before the last
    trt_flavor: str = "auto"
    trt_targets: list[str] | None = None
    trt_workspace_gib: float | None = None  # None: no limit (TensorRT default: the device memory)
    trt_opt_level: int = 3
    timing_cache: str | None = None
    verify: bool = True
    overwrite: bool = False
    attention: str = "onnx"  # "onnx": standard ops; "plugin": TensorRT dinov3_deploy::attention plugin nodes
    external_data: bool | None = None  # None: only when the weights exceed protobuf's 2 GiB


def parse_formats(text: str | tuple[str, ...]) -> tuple[str, ...]:
    items = [f.strip() for f in text.split(",")] if isinstance(text, str) else list(text)
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise DeployError(f"--format takes a comma-separated subset of {', '.join(FORMATS)}; got '{text}'")
    if "onnx" not in items:
        items.insert(0, "onnx")  # every artifact carries its ONNX (the engine is built from it)
    return tuple(dict.fromkeys(items))


def shape_spec(opts: ExportOptions, multiple: int) -> ShapeSpec:
    batch = DimRange.parse(opts.batch, "--batch")
    if opts.static:
        h, w = parse_static(opts.static)
        height, width = DimRange(h, h, h), DimRange(w, w, w)
    else:
        height = DimRange.parse(opts.height, "--height")
        width = DimRange.parse(opts.width or opts.height, "--width")
    return ShapeSpec(batch, height, width, multiple)


def check_attention_option(opts: ExportOptions, family: str, formats: tuple[str, ...]) -> bool:
    """Whether to export plugin nodes; refuses combinations that cannot work, before any work."""
    if opts.attention not in ("onnx", "plugin"):
        raise DeployError(f"--attention must be 'onnx' or 'plugin', got '{opts.attention}'")
    if opts.attention == "onnx":
        return False
    if family != "vit":
        raise DeployError("--attention plugin applies to ViT backbones (ConvNeXt has no attention)")
    if opts.precision == "fp32":
        raise DeployError("--attention plugin needs --precision fp16 or bf16: the dinov3_deploy::attention plugin "
                          "declares only fp16/bf16 inputs")
    if "trt" in formats and opts.trt_flavor == "tensorrt-rtx":
        raise DeployError("--attention plugin needs full TensorRT: TensorRT-RTX's Python bindings have no "
                          "tensorrt.plugin (Quickly Deployable Plugins). Use --trt-flavor tensorrt on a GPU machine")
    import torch

    engine_here = ("trt" in formats and importlib.util.find_spec("tensorrt") is not None
                   and torch.cuda.is_available())
    if opts.verify and not engine_here:
        raise DeployError("--attention plugin graphs run only in TensorRT with the dinov3_deploy plugins; without "
                          "--format trt, full TensorRT and a GPU here nothing can verify this export: pass "
                          "--no-verify, then run `dinov3-deploy verify` on such a machine "
                          "(pip install 'dinov3-deploy[trt]')")
    return True


def _model_name(source: MultiSource) -> str:
    return f"dinov3_{source.backbone}_{'_'.join(source.tasks)}"


def resolve_source(opts: ExportOptions, model_name: str | None) -> MultiSource:
    """The model to export: its heads (one, several, or none for features) on one backbone. The tasks
    come from the head checkpoints when --task is not given; one head is the one-part case."""
    from dinov3_deploy.reference.models.task_model import TASKS

    heads = [opts.head] if isinstance(opts.head, str) else list(opts.head or [])
    tasks = [t.strip() for t in opts.task.split(",")] if opts.task else []
    bad = [t for t in tasks if t not in TASKS]
    if bad or (opts.task is not None and not tasks):
        raise DeployError(f"--task takes one of {', '.join(TASKS)} or a comma-separated list of them; "
                          f"got '{opts.task}'")
    if len(set(tasks)) != len(tasks):
        raise DeployError(f"--task names a task twice: '{opts.task}'")
    if heads and tasks:
        from dinov3_deploy.model_source import head_task

        head_tasks = [head_task(h) for h in heads]
        if sorted(head_tasks) != sorted(tasks):
            raise DeployError(f"--task {opts.task} does not match the heads' tasks ({', '.join(head_tasks)}); "
                              "drop --task: the heads say what they compute")
    if opts.feature_layers and (len(heads) > 1 or len(tasks) > 1):
        raise DeployError("--feature-layers applies to a single --task features export, not a multi-head one")
    return MultiSource.resolve(tasks or ["seg"], model_name, opts.weights, heads, n_classes=opts.n_classes,
                               layers=opts.layers, seed=opts.seed, init=opts.random_init,
                               random_backbone_ok=opts.random_backbone_ok)


class ExportParityError(ParityError):
    """Verification failed, so no artifact was written; carries the parity report (the CLI prints its
    table before the one-line error)."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ExportPlan:
    """What the checks decided before any model is built: a bad option fails here, in seconds."""

    formats: tuple[str, ...]
    source: MultiSource
    cfg: Any  # the backbone's reference config
    shapes: ShapeSpec
    plugin: bool  # attention as dinov3_deploy::attention plugin nodes
    api: Any  # the TensorRT flavour's API when an engine is built, else None
    opset: int | None = None  # the graph's opset (None: DeployModule's default); fp8 needs 19+
    deform_plugin: bool = False  # M2F deformable attention as dinov3_deploy::ms_deform_attn plugin nodes

    @property
    def plugins(self) -> list[str]:
        """The TensorRT plugins the graph's custom nodes name (the manifest's onnx.plugins)."""
        return [p for p, used in ((ATTENTION_PLUGIN, self.plugin), (MS_DEFORM_ATTN_PLUGIN, self.deform_plugin)) if used]


@dataclass
class Prepared:
    """The fp32 reference, and the folded low-precision module the graph is exported from."""

    model: Any  # the fp32 reference: verification compares with it
    module: Any  # DeployModule
    folds: list
    islands: list
    quant: Any = None  # int8 / fp8: quant_step.QuantInputs (calibration images, FLOPs, smoothing)
    quantization: Any = None  # int8 / fp8: quant_step.QuantReport, once the graph is quantized


def export_artifact(opts: ExportOptions, progress: Progress | None = None) -> tuple[Path, dict | None]:
    """Write the artifact; returns (path, parity report or None). Raises DeployError subclasses
    (ExportParityError, carrying the report, when verification fails: no artifact is left behind then)."""
    progress = progress or Progress()
    t_start = time.perf_counter()
    plan = plan_export(opts)
    prepared = prepare_module(opts, plan, progress)
    with ArtifactWriter(opts.out, overwrite=opts.overwrite) as writer:
        root = writer.path
        result, graph = export_graph(prepared, root, opts, plan, progress)
        prepared.module = None  # the low-precision copy is in the ONNX now
        manifest = build_manifest(opts, plan, prepared, result, graph)
        if plan.api is not None:
            manifest.tensorrt = build_engine_step(root, opts, plan, progress)
        if "triton-repo" in plan.formats:
            manifest.triton = triton_step(root, manifest, plan, result, graph, progress)
        report = verify_step(root, manifest, prepared.model, opts, progress)
        manifest.export_seconds = round(time.perf_counter() - t_start, 1)
        path = writer.finish(manifest)
    return path, report


def plan_export(opts: ExportOptions) -> ExportPlan:
    """Every check that needs no model: formats, precision, the model and its heads, shapes, the
    attention option, and the TensorRT flavour (a missing TensorRT fails now, not after the export)."""
    from dinov3_deploy.deploy_module import PRECISIONS
    from dinov3_deploy.export.quant_step import check_quant_options
    from dinov3_deploy.export.quantize import QUANT_PRECISIONS
    from dinov3_deploy.options import resolve_model
    from dinov3_deploy.reference.configs import get_config

    formats = parse_formats(opts.formats)
    if opts.precision not in (*PRECISIONS, *QUANT_PRECISIONS):
        raise DeployError(f"--precision must be one of {', '.join((*PRECISIONS, *QUANT_PRECISIONS))}, "
                          f"got '{opts.precision}'")
    # the checkpoint names its model whenever it can (metadata, config.json, Meta's file name)
    model_name = resolve_model(opts.model, opts.weights, default=None if opts.head else DEFAULT_MODEL)
    source = resolve_source(opts, model_name)
    cfg = get_config(source.backbone)
    m2f = any(p.head_type == "m2f" for p in source.parts)
    if m2f:
        from dinov3_deploy.export.m2f_model import check_deform_plugin, check_m2f_options

        check_m2f_options(opts, source)
    # the M2F adapter's stride-32 level must tile the image: H and W multiples of 32
    shapes = shape_spec(opts, 32 if m2f else cfg.input_multiple)  # bad shapes fail before anything is built
    # int8 / fp8: what cannot be quantized yet is refused here, in one line (fp8 exports at opset 19+)
    quant_opset = check_quant_options(opts.precision, plugin=opts.attention == "plugin", family=cfg.family,
                                      multi=source.multi, opset=opts.opset, uint8_input=opts.uint8_input)
    if m2f and is_quantized(opts.precision):
        raise DeployError(f"--precision {opts.precision}: Mask2Former heads are not quantized yet; use fp32 or fp16")
    plugin = check_attention_option(opts, cfg.family, formats)
    api = None
    if "trt" in formats:
        from dinov3_deploy.engines.trt_api import load_api

        api = load_api(opts.trt_flavor)
    deform_plugin = m2f and check_deform_plugin(opts, formats, api)
    return ExportPlan(formats, source, cfg, shapes, plugin, api, quant_opset, deform_plugin)


def prepare_module(opts: ExportOptions, plan: ExportPlan, progress: Progress) -> Prepared:
    """Build the fp32 reference, fold it, calibrate the low-precision islands, and wrap the folded
    copy in the DeployModule the graph is traced from."""
    from dinov3_deploy.deploy_module import DeployModule, island_args
    from dinov3_deploy.export.calibration import Island
    from dinov3_deploy.reference.models.fold import fold_all

    source = plan.source
    with progress.step(f"building {'+'.join(source.tasks)} model on {source.backbone}"):
        # explicit-softmax attention: fp32 scores in the graph; or the Triton op, exported as plugin nodes
        model = source.build(attn_impl="triton" if plan.plugin else "math")
    mean, std = tuple(model.mean), tuple(model.std)
    # DeployModule casts a copy, so `model` stays the fp32 reference verification compares with.
    # Exact folds (LayerScale, ConvNeXt gamma, head BatchNorm) go into the exported weights so no op
    # materialises a raw branch output far larger than its contribution (trained gammas reach 1e-5:
    # unfolded fp16 overflows). `model` stays unfolded: verification compares against it.
    fold_what = "LayerScale / gamma / BatchNorm" + (" / input normalisation" if opts.uint8_input else "")
    with progress.step(f"folding {fold_what} into the layers before them"):
        # --uint8-input: the graph's (x/255 - mean)/std goes into the first conv, which then takes
        # pixels - 127.5 (fold.PIXEL_CENTRE); calibration feeds the folded model that input
        export_model, folds = fold_all(model, normalization=(mean, std) if opts.uint8_input else None)
    if is_quantized(opts.precision):
        return _prepare_quantized(opts, plan, model, export_model, folds, progress)
    islands = calibrate(export_model, opts, plan, mean, std, progress)
    if plan.deform_plugin:  # traced through the kernel's custom op (calibration ran the plain core)
        export_model.segmentor.set_deform_impl("triton")
    if opts.precision == "bf16" and plan.cfg.family == "vit":
        # bf16's 8-bit mantissa: the residual stream (deploy_module.Fp32ResidualBlock says what it measured)
        # and the patch embedding, which projects raw pixels, stay fp32; 1.2 % of vits16's matmul FLOPs at 224
        islands += [Island("backbone.patch_embed", "precision"), Island("backbone.blocks", "residual")]
    module = DeployModule(export_model, opts.precision, seg_output=opts.seg_output, uint8_input=opts.uint8_input,
                          feature_layers=opts.feature_layers,
                          opset=opts.opset, normalization_folded=opts.uint8_input, **island_args(islands))
    islands += [Island(name, "opset") for name in module.opset_islands]
    islands += [Island(name, "sampling") for name in module.sampling_islands]
    return Prepared(model, module, folds, islands)


def is_quantized(precision: str) -> bool:
    from dinov3_deploy.export.quantize import QUANT_PRECISIONS

    return precision in QUANT_PRECISIONS


def _prepare_quantized(opts: ExportOptions, plan: ExportPlan, model, export_model, folds: list,
                       progress: Progress) -> Prepared:
    """int8 / fp8: smooth the folded model on the calibration images; it is traced in fp32 and
    quantized as a graph afterwards (export_graph)."""
    from dinov3_deploy.deploy_module import DeployModule
    from dinov3_deploy.export.calibration import CALIB_IMAGES, calibration_images
    from dinov3_deploy.export.quant_step import prepare_export_model
    from dinov3_deploy.verification.verify import case_sizes

    with progress.step(f"calibration images ({opts.calib or 'built-in synthetic'}); SmoothQuant migration"):
        # twice the fp16 set: the search calibrates on one half and judges on the other (sensitivity.QuantModel),
        # at every size verify runs (judged at the opt size alone, a vits16 export 224:224:512 failed at 240x256)
        xs = [calibration_images(opts.calib, h, w, tuple(model.mean), tuple(model.std), n=2 * CALIB_IMAGES)
              for h, w in case_sizes(plan.shapes)]
        quant = prepare_export_model(export_model, xs[0], xs[1:])
    module = DeployModule(export_model, "fp32", seg_output=opts.seg_output, feature_layers=opts.feature_layers,
                          opset=plan.opset)
    return Prepared(model, module, folds, [], quant=quant)


def calibrate(export_model, opts: ExportOptions, plan: ExportPlan, mean, std, progress: Progress) -> list:
    """fp16/bf16 (or --calib): the ops whose fp32 ranges on the calibration images need fp32 islands."""
    if opts.precision == "fp32" and opts.calib is None:
        return []
    from dinov3_deploy.export.calibration import calibration_images, choose_islands, record_maxima

    with progress.step(f"calibrating ({opts.calib or 'built-in synthetic images'}): ranges of every op in fp32"):
        # at the tuned (opt) resolution: the one the deployment is expected to see most
        x = calibration_images(opts.calib, plan.shapes.height.opt, plan.shapes.width.opt, mean, std,
                               centred_pixels=opts.uint8_input)
        if plan.plugin:  # same function; the Triton op needs a GPU, calibration runs here on any device
            export_model.backbone.set_attn_impl("math")
        islands = choose_islands(export_model, record_maxima(export_model, x), opts.precision,
                                 residual_fp32=plan.cfg.family == "vit")
        if plan.plugin:
            export_model.backbone.set_attn_impl("triton")
    return islands


def export_graph(prepared: Prepared, root: Path, opts: ExportOptions, plan: ExportPlan, progress: Progress):
    """ONNX export (int8 / fp8: then quantized, prepared.quantization) and the graph check; returns
    (ExportResult, the manifest's GraphInfo)."""
    from dinov3_deploy.export.onnx_graph import ensure_clean, export_onnx

    shapes, module = plan.shapes, prepared.module
    traced = "fp32, to be quantized" if prepared.quant is not None else opts.precision
    with progress.step(f"exporting ONNX ({traced}, batch {shapes.batch}, {shapes.height}x{shapes.width})"):
        result = export_onnx(module, root / ONNX_NAME, shapes, external_data=opts.external_data,
                             attention_plugin=plan.plugin, deform_plugin=plan.deform_plugin)
    fp32_ops = module.fp32_compute_ops(module.example_input(1, shapes.height.min, shapes.width.min))
    if prepared.quant is not None:
        from dinov3_deploy.export.quant_step import quantize_onnx_file

        if result.external_data:
            raise DeployError(f"--precision {opts.precision}: graphs with external weights are not quantized yet")
        with progress.step(f"{opts.precision}: choosing the calibration method, ranking layer sensitivity, keeping "
                           "the most sensitive in fp32 until the gates hold"):
            prepared.quantization = quantize_onnx_file(root / ONNX_NAME, prepared.quant, opts.precision,
                                                       plan.source.task, log=progress.log)
        fp32_ops = len(prepared.quantization.kept_layers)
    with progress.step("checking the graph (onnx.checker, shape inference, hygiene)"):
        facts = ensure_clean(root / ONNX_NAME, opts.precision, shapes, fp32_ops=fp32_ops)
    return result, facts.to_info()


def _head_info(source: ModelSource, spec, outputs: list[str]) -> HeadInfo:
    classes = None
    if source.task in ("seg", "cls"):
        classes = Classes(names=list(spec.class_names), palette=[list(p) for p in spec.palette])
    return HeadInfo(task=source.task, outputs=outputs, classes=classes, head_type=spec.head_type, layers=spec.layers,
                    n_classes=spec.n_classes, checkpoint=source.head, random_weights=source.random_head,
                    spec=spec.to_dict())


def head_infos(source: MultiSource, model, names: list[str]) -> list[HeadInfo]:
    """One HeadInfo per head (features included), with the graph outputs each produces."""
    multi = source.multi
    return [_head_info(p, model.specs[p.task],
                       [n for n in names if not multi or n.startswith(p.task + ".")])
            for p in source.parts]


def input_spec(opts: ExportOptions, plan: ExportPlan, mean, std) -> InputSpec:
    u8 = opts.uint8_input
    return InputSpec(
        name=INPUT_NAMES["uint8" if u8 else "float32"], dtype="uint8" if u8 else "float32",
        layout="NHWC" if u8 else "NCHW", color="RGB", normalize=Normalization(mean=mean, std=std, in_graph=u8),
        value_range="0..255 (normalised in the graph)" if u8 else "(x/255 - mean) / std, done by the caller",
        resize=f"none: the caller resizes or pads to a multiple of {plan.cfg.input_multiple} within the ranges",
        shapes=plan.shapes)


def build_manifest(opts: ExportOptions, plan: ExportPlan, prepared: Prepared, result, graph) -> Manifest:
    """The manifest of the exported graph (engine, Triton repository and parity come later)."""
    source, cfg, model = plan.source, plan.cfg, prepared.model
    names = [o.name for o in graph.outputs]
    manifest = Manifest(
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        task=source.task,
        precision=opts.precision,
        backbone=BackboneInfo(name=source.backbone, family=cfg.family, embed_dim=cfg.embed_dim,
                              patch_size=cfg.patch_size, input_multiple=cfg.input_multiple,
                              weights=source.weights, random_weights=source.random_backbone),
        **head_fields(head_infos(source, model, names), source.multi),
        source=source.to_manifest(),
        input=input_spec(opts, plan, tuple(model.mean), tuple(model.std)),
        outputs=[OutputSpec(name=o.name, dtype=o.dtype, shape=o.shape,
                            doc=output_doc(o.name, source.task, _head_type(model, source)),
                            stride=output_stride(o.name, source.task, _head_type(model, source)))
                 for o in graph.outputs],
        outputs_config=OutputsConfig(seg_output=opts.seg_output, feature_layers=opts.feature_layers),
        onnx=OnnxInfo(file=ONNX_NAME, files=result.files, opset=result.opset,
                      plugins=plan.plugins, external_data=result.external_data,
                      exporter="torch.onnx (dynamo, torch.export)", export_example_shape=result.example_shape,
                      graph=graph),
        toolchain=toolchain_versions(),
        folds=[FoldInfo(**f.to_dict()) for f in prepared.folds],
        fp32_islands=[IslandInfo(**i.to_dict()) for i in prepared.islands],
        quantization=QuantizationInfo.from_report(prepared.quantization) if prepared.quantization else None,
    )
    manifest.notes += random_weight_notes(source)
    return manifest


def _head_type(model, source: MultiSource) -> str | None:
    return None if source.multi else model.specs[source.task].head_type if source.task != "features" else None


def random_weight_notes(source: MultiSource) -> list[str]:
    """What a user must know about random weights in the artifact."""
    trained = [p for p in source.parts if p.head is not None]
    if trained and source.random_backbone:
        _, seed, init = trained[0].backbone_identity()
        return [f"RANDOM BACKBONE (seed {seed}, {init}, as the head was trained on): the head's predictions are only "
                "as good as features of a random network. Pass --weights for real ones."]
    if source.random_backbone or source.random_head:
        what = " and ".join(w for w, r in (("backbone", source.random_backbone), ("head", source.random_head)) if r)
        return [f"RANDOM WEIGHTS ({what}, seed {source.seed}): this artifact demonstrates the "
                "pipeline; its predictions mean nothing. Pass --weights / --head for real ones."]
    return []


def build_engine_step(root: Path, opts: ExportOptions, plan: ExportPlan, progress: Progress) -> TensorRTInfo:
    from dinov3_deploy.engines.build import build_engine, network_from_onnx, profiles_from_shapes

    api = plan.api
    with progress.step(f"building a strongly typed {api.flavor} {api.version} engine"):
        if plan.plugins:
            from dinov3_deploy.engines.plugins import register_plugins

            register_plugins()
        net = network_from_onnx(root / ONNX_NAME, api)
        built = build_engine(net, profiles_from_shapes(net, plan.shapes), workspace_gib=opts.trt_workspace_gib,
                             opt_level=opts.trt_opt_level, targets=opts.trt_targets,
                             timing_cache=Path(opts.timing_cache) if opts.timing_cache else None)
        built.save(root / ENGINE_NAME)
        return TensorRTInfo.from_facts(ENGINE_NAME, built.facts)


def triton_step(root: Path, manifest: Manifest, plan: ExportPlan, result, graph, progress: Progress):
    from dinov3_deploy.export.triton_repo import write_triton_repo

    with progress.step("writing the Triton model repository"):
        trt = manifest.tensorrt
        return write_triton_repo(root, _model_name(plan.source), graph, plan.shapes, result.files,
                                 engine_file=trt.file if trt else None, engine_flavor=trt.flavor if trt else None,
                                 plugins=plan.plugins)


def verify_step(root: Path, manifest: Manifest, model, opts: ExportOptions, progress: Progress) -> dict | None:
    """Parity against the fp32 reference, written to parity.json; a failure raises ExportParityError
    (carrying the report) and the writer then leaves nothing behind."""
    if not opts.verify:
        write_json(root / PARITY_NAME, {"schema": "dinov3-deploy-parity", "skipped": "--no-verify", "passed": None})
        return None
    from dinov3_deploy.verification.verify import failure_message, verify_artifact

    with progress.step("verifying parity against the fp32 PyTorch reference"):
        report = verify_artifact(Artifact(root, manifest), model=model, log=progress.log)
    write_json(root / PARITY_NAME, report)
    if not report["passed"]:
        raise ExportParityError(failure_message(report) + ". no artifact was written; pass --no-verify to write "
                                "it anyway", report)
    return report

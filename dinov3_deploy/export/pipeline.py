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

from dinov3_deploy.artifact import ENGINE_NAME, ONNX_NAME, PARITY_NAME, Artifact, ArtifactWriter, toolchain_versions
from dinov3_deploy.errors import DeployError
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
)
from dinov3_deploy.model_source import ModelSource, MultiSource
from dinov3_deploy.shapes import DimRange, ShapeSpec, parse_static

FORMATS = ("onnx", "trt", "triton-repo")
DEFAULT_MODEL = "vits16"  # the smallest released ViT: the embedded default

OUTPUT_DOC = {
    ("features", "cls"): "normalised class token [B, D]",
    ("features", "storage"): "normalised storage (register) tokens [B, 4, D]",
    ("features", "patch"): "normalised patch tokens [B, h*w, D], row-major over the patch grid",
    ("features", "patch_block"): "normalised patch tokens of that block [B, h*w, D] (final norm applied)",
    ("seg", "logits"): "class scores at patch resolution [B, C, h, w] (upsample bilinearly, align_corners=False)",
    ("seg", "probs"): "softmax of the bilinearly upsampled logits [B, C, H, W]",
    ("seg", "labels"): "argmax class per pixel of the upsampled logits [B, H, W] int32",
    ("depth", "depth"): "depth in metres at patch resolution [B, 1, h, w]",
    ("cls", "logits"): "class scores [B, C]",
}


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


ATTENTION_PLUGIN = "dinov3_deploy::attention"


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


def _model_name(source: ModelSource | MultiSource) -> str:
    return f"dinov3_{source.backbone}_{'_'.join(getattr(source, 'tasks', [source.task]))}"


def resolve_source(opts: ExportOptions, model_name: str | None) -> ModelSource | MultiSource:
    """The model to export: one head (or none), or several heads on one backbone. The task comes from
    the head checkpoints when --task is not given; several tasks or heads make a MultiSource."""
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
        from dinov3_deploy.reference.head_checkpoint import read_head_spec

        head_tasks = [read_head_spec(h).task for h in heads]
        if sorted(head_tasks) != sorted(tasks):
            raise DeployError(f"--task {opts.task} does not match the heads' tasks ({', '.join(head_tasks)}); "
                              "drop --task: the heads say what they compute")
        tasks = head_tasks
    args = dict(n_classes=opts.n_classes, layers=opts.layers, seed=opts.seed, init=opts.random_init)
    if len(heads) > 1 or len(tasks) > 1:
        if opts.feature_layers:
            raise DeployError("--feature-layers applies to a single --task features export, not a multi-head one")
        return MultiSource.resolve(tasks, model_name, opts.weights, heads, **args)
    if heads:
        from dinov3_deploy.reference.head_checkpoint import read_head_spec

        task = read_head_spec(heads[0]).task
        return ModelSource.resolve(task, model_name, opts.weights, heads[0], **args)
    return ModelSource.resolve(tasks[0] if tasks else "seg", model_name, opts.weights, None, **args)


def _output_doc(task: str, name: str) -> str:
    if "." in name:  # a multi-head graph: "<task>.<output>"
        task, name = name.split(".", 1)
    return OUTPUT_DOC.get((task, name.rstrip("0123456789")), "")


def _head_info(source: ModelSource, spec, outputs: list[str], multi: bool) -> HeadInfo:
    classes = None
    if multi and source.task in ("seg", "cls"):
        classes = Classes(names=list(spec.class_names), palette=[list(p) for p in spec.palette])
    return HeadInfo(task=source.task, outputs=outputs, classes=classes, head_type=spec.head_type, layers=spec.layers,
                    n_classes=spec.n_classes, checkpoint=source.head, random_weights=source.random_head,
                    spec=spec.to_dict())


def export_artifact(opts: ExportOptions, progress: Progress | None = None) -> tuple[Path, dict]:
    """Write the artifact; returns (path, parity report or None). Raises DeployError subclasses
    (ParityError when verification fails: no artifact is left behind then)."""
    from dinov3_deploy.deploy_module import PRECISIONS, DeployModule, island_args
    from dinov3_deploy.export.onnx_graph import ensure_clean, export_onnx
    from dinov3_deploy.reference.configs import get_config

    progress = progress or Progress()
    t_start = time.perf_counter()
    from dinov3_deploy.export.quant_step import check_quant_options, is_quantized

    formats = parse_formats(opts.formats)
    quantized = is_quantized(opts.precision)
    if opts.precision not in PRECISIONS and not quantized:
        raise DeployError(f"--precision must be one of {', '.join(PRECISIONS)}, int8, fp8; got '{opts.precision}'")
    from dinov3_deploy.options import resolve_model

    # the checkpoint names its model whenever it can (metadata, config.json, Meta's file name)
    model_name = resolve_model(opts.model, opts.weights, default=None if opts.head else DEFAULT_MODEL)
    source = resolve_source(opts, model_name)
    multi = isinstance(source, MultiSource)
    cfg = get_config(source.backbone)
    shapes = shape_spec(opts, cfg.input_multiple)  # bad shapes fail before anything is built
    # int8 / fp8: what cannot be quantized yet is refused here, in one line (fp8 exports at opset 19+)
    opset = check_quant_options(opts.precision, plugin=opts.attention == "plugin", family=cfg.family, multi=multi,
                                opset=opts.opset, uint8_input=opts.uint8_input)
    plugin = check_attention_option(opts, cfg.family, formats)
    api = None
    if "trt" in formats:
        from dinov3_deploy.engines.trt_api import load_api

        api = load_api(opts.trt_flavor)  # a missing TensorRT fails now, not after the export

    what = "+".join(source.tasks) if multi else source.task
    with progress.step(f"building {what} model on {source.backbone}"):
        # explicit-softmax attention: fp32 scores in the graph; or the Triton op, exported as plugin nodes
        model = source.build(attn_impl="triton" if plugin else "math")
    spec = None if multi else model.spec  # a multi-head model has one spec per head (model.specs)
    mean, std = (model.mean, model.std) if multi else (tuple(spec.mean), tuple(spec.std))
    # DeployModule casts a copy, so `model` stays the fp32 reference verification compares with.
    # Exact folds (LayerScale, ConvNeXt gamma, head BatchNorm) go into the exported weights so no op
    # materialises a raw branch output far larger than its contribution (trained gammas reach 1e-5:
    # unfolded fp16 overflows). `model` stays unfolded: verification compares against it.
    from dinov3_deploy.reference.models.fold import fold_all

    fold_what = "LayerScale / gamma / BatchNorm" + (" / input normalisation" if opts.uint8_input else "")
    with progress.step(f"folding {fold_what} into the layers before them"):
        # --uint8-input: the graph's (x/255 - mean)/std goes into the first conv, which then takes
        # pixels - 127.5 (fold.PIXEL_CENTRE); calibration below feeds the folded model that input
        export_model, folds = fold_all(model, normalization=(tuple(mean), tuple(std)) if opts.uint8_input else None)
    islands, quant = [], None
    if quantized:
        from dinov3_deploy.export.calibration import calibration_images
        from dinov3_deploy.export.quant_step import prepare_export_model

        with progress.step(f"calibration images ({opts.calib or 'built-in synthetic'}); SmoothQuant migration"):
            x = calibration_images(opts.calib, shapes.height.opt, shapes.width.opt, mean, std)
            quant = prepare_export_model(export_model, x)
    elif opts.precision != "fp32" or opts.calib is not None:
        from dinov3_deploy.export.calibration import calibration_images, choose_islands, record_maxima

        with progress.step(f"calibrating ({opts.calib or 'built-in synthetic images'}): ranges of every op in fp32"):
            # at the tuned (opt) resolution: the one the deployment is expected to see most
            x = calibration_images(opts.calib, shapes.height.opt, shapes.width.opt, mean, std,
                                   centred_pixels=opts.uint8_input)
            if plugin:  # same function; the Triton op needs a GPU, calibration runs here on any device
                export_model.backbone.set_attn_impl("math")
            islands = choose_islands(export_model, record_maxima(export_model, x), opts.precision,
                                     residual_fp32=cfg.family == "vit")
            if plugin:
                export_model.backbone.set_attn_impl("triton")
    from dinov3_deploy.export.calibration import Island

    if opts.precision == "bf16" and cfg.family == "vit":
        # bf16's 8-bit mantissa: the residual stream (deploy_module.Fp32ResidualBlock says what it measured)
        # and the patch embedding, which projects raw pixels, stay fp32; 1.2 % of vits16's matmul FLOPs at 224
        islands += [Island("backbone.patch_embed", "precision"), Island("backbone.blocks", "residual")]
    # int8 / fp8: traced in fp32, then quantized as a graph (quant_step.quantize_onnx_file)
    module = DeployModule(export_model, "fp32" if quantized else opts.precision, seg_output=opts.seg_output,
                          uint8_input=opts.uint8_input, feature_layers=opts.feature_layers,
                          opset=opset, normalization_folded=opts.uint8_input, **island_args(islands))
    islands += [Island(name, "opset") for name in module.opset_islands]

    with ArtifactWriter(opts.out, overwrite=opts.overwrite) as writer:
        root = writer.path
        with progress.step(f"exporting ONNX ({'fp32, to be quantized' if quantized else opts.precision}, batch "
                           f"{shapes.batch}, {shapes.height}x{shapes.width})"):
            result = export_onnx(module, root / ONNX_NAME, shapes, external_data=opts.external_data,
                                 attention_plugin=plugin)
        fp32_ops, quantization = module.fp32_compute_ops(), None
        if quantized:
            quantization = quantize_step(root / ONNX_NAME, result, quant, opts.precision, source.task, progress)
            fp32_ops = len(quantization.kept_layers)
        with progress.step("checking the graph (onnx.checker, shape inference, hygiene)"):
            facts = ensure_clean(root / ONNX_NAME, opts.precision, shapes, fp32_ops=fp32_ops)
        graph = facts.to_info()
        del module  # the low-precision copy is in the ONNX now

        names = [o.name for o in graph.outputs]
        if multi:
            heads = [_head_info(p, model.specs[p.task], [n for n in names if n.startswith(p.task + ".")], True)
                     for p in source.parts]
            head = None
        else:
            heads = []
            head = None if source.task == "features" else _head_info(source, spec, names, False)
        manifest = Manifest(
            created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            task=source.task,
            precision=opts.precision,
            backbone=BackboneInfo(name=source.backbone, family=cfg.family, embed_dim=cfg.embed_dim,
                                  patch_size=cfg.patch_size, input_multiple=cfg.input_multiple,
                                  weights=source.weights, random_weights=source.random_backbone),
            head=head,
            heads=heads,
            source=source.to_manifest(),
            input=InputSpec(
                name=INPUT_NAMES["uint8" if opts.uint8_input else "float32"],
                dtype="uint8" if opts.uint8_input else "float32",
                layout="NHWC" if opts.uint8_input else "NCHW",
                color="RGB",
                normalize=Normalization(mean=mean, std=std, in_graph=opts.uint8_input),
                value_range="0..255 (normalised in the graph)" if opts.uint8_input
                else "(x/255 - mean) / std, done by the caller",
                resize=f"none: the caller resizes or pads to a multiple of {cfg.input_multiple} within the ranges",
                shapes=shapes,
            ),
            outputs=[OutputSpec(name=o.name, dtype=o.dtype, shape=o.shape, doc=_output_doc(source.task, o.name))
                     for o in graph.outputs],
            outputs_config=OutputsConfig(seg_output=opts.seg_output, feature_layers=opts.feature_layers),
            classes=Classes(names=list(spec.class_names), palette=[list(p) for p in spec.palette])
            if source.task in ("seg", "cls") else None,  # multi: per head
            onnx=OnnxInfo(file=ONNX_NAME, files=result.files, opset=result.opset,
                          plugins=[ATTENTION_PLUGIN] if plugin else [], external_data=result.external_data,
                          exporter="torch.onnx (dynamo, torch.export)", export_example_shape=result.example_shape,
                          graph=graph),
            toolchain=toolchain_versions(),
            folds=[FoldInfo(**f.to_dict()) for f in folds],
            fp32_islands=[IslandInfo(**i.to_dict()) for i in islands],
            quantization=QuantizationInfo.from_report(quantization) if quantization else None,
        )
        trained = [p for p in getattr(source, "parts", [source]) if p.head is not None]
        if trained and source.random_backbone:
            _, seed, init = trained[0].backbone_identity()
            manifest.notes.append(
                f"RANDOM BACKBONE (seed {seed}, {init}, as the head was trained on): the head's predictions are only "
                "as good as features of a random network. Pass --weights for real ones.")
        elif source.random_backbone or source.random_head:
            what = " and ".join(w for w, r in (("backbone", source.random_backbone), ("head", source.random_head)) if r)
            manifest.notes.append(f"RANDOM WEIGHTS ({what}, seed {source.seed}): this artifact demonstrates the "
                                  "pipeline; its predictions mean nothing. Pass --weights / --head for real ones.")

        if api is not None:
            from dinov3_deploy.engines.build import (
                build_engine,
                network_from_onnx,
                profiles_from_shapes,
            )

            with progress.step(f"building a strongly typed {api.flavor} {api.version} engine"):
                if plugin:
                    from dinov3_deploy.engines.plugins import register_plugins

                    register_plugins()
                net = network_from_onnx(root / ONNX_NAME, api)
                built = build_engine(net, profiles_from_shapes(net, shapes), workspace_gib=opts.trt_workspace_gib,
                                     opt_level=opts.trt_opt_level, targets=opts.trt_targets,
                                     timing_cache=Path(opts.timing_cache) if opts.timing_cache else None)
                built.save(root / ENGINE_NAME)
                manifest.tensorrt = TensorRTInfo.from_facts(ENGINE_NAME, built.facts)
                del net

        if "triton-repo" in formats:
            from dinov3_deploy.export.triton_repo import write_triton_repo

            with progress.step("writing the Triton model repository"):
                trt = manifest.tensorrt
                manifest.triton = write_triton_repo(root, _model_name(source), graph, shapes, result.files,
                                                    engine_file=trt.file if trt else None,
                                                    engine_flavor=trt.flavor if trt else None)

        report = None
        if opts.verify:
            from dinov3_deploy.verification.verify import verify_artifact

            with progress.step("verifying parity against the fp32 PyTorch reference"):
                report = verify_artifact(Artifact(root, manifest), model=model, log=progress.log)
            (root / PARITY_NAME).write_text(_dumps(report))
        else:
            (root / PARITY_NAME).write_text(_dumps({"schema": "dinov3-deploy-parity", "skipped": "--no-verify",
                                                    "passed": None}))
        if report is not None and not report["passed"]:
            from dinov3_deploy.verification.verify import raise_if_failed

            progress.report = report  # the CLI prints the table before the error
            raise_if_failed(report, hint="no artifact was written; pass --no-verify to write it anyway")
        manifest.export_seconds = round(time.perf_counter() - t_start, 1)
        path = writer.finish(manifest)
    return path, report


def quantize_step(path: Path, result, quant, precision: str, task: str, progress: Progress):
    """int8 / fp8: the traced fp32 graph at `path` becomes its QDQ graph; returns the QuantReport."""
    from dinov3_deploy.export.quant_step import quantize_onnx_file

    if result.external_data:
        raise DeployError(f"--precision {precision}: graphs with external weights are not quantized yet")
    with progress.step(f"{precision}: choosing the calibration method, ranking layer sensitivity, keeping the "
                       "most sensitive in fp32 until the gates hold"):
        return quantize_onnx_file(path, quant, precision, task, log=progress.log)


def _dumps(d: dict) -> str:
    import json

    return json.dumps(d, indent=2) + "\n"

"""`dinov3-deploy export`: a verified deployment artifact (ONNX, TensorRT engine, Triton repository)."""

from __future__ import annotations

import click

from dinov3_deploy.export.pipeline import DEFAULT_MODEL, ExportOptions
from dinov3_deploy.options import (
    out_option,
    overwrite_option,
    random_init_option,
    trt_targets_option,
    weights_option,
)


@click.command("export")
@click.option("--task", default=None, metavar="TASK[,TASK...]",
              help="What the graph outputs: seg (segmentation logits), depth (metres), cls (class logits) or "
                   "features (tokens); several, comma-separated (seg,depth,cls), share one backbone pass. "
                   "Default: the --head checkpoints' tasks, else seg.")
@click.option("--model", "model", default=None,
              help=f"Backbone name (see `dinov3-deploy models`). Default: the one --weights or --head names, "
                   f"else {DEFAULT_MODEL}.")
@weights_option("Backbone weights (Meta's .pth, HF folder or file, timm, our .safetensors). Default: the ones "
                "--head was trained on; random weights otherwise.")
@click.option("--head", "heads", type=click.Path(exists=True), multiple=True,
              help="Head checkpoint directory written by `dinov3-deploy train`; repeat it for a multi-head "
                   "artifact (one graph, one backbone pass, outputs <task>.<output>). Random head when omitted.")
@click.option("--n-classes", type=click.IntRange(min=0), default=0,
              help="Classes of a random seg/cls head (default 6).")
@click.option("--layers", type=click.Choice(["last", "four_last", "four_even"]), default="last", show_default=True,
              help="Backbone blocks a random head reads.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8", "fp8"]), default="fp32",
              show_default=True,
              help="Decided in the graph (LayerNorm statistics, softmax and RoPE stay fp32).")
@click.option("--opset", type=click.IntRange(18, 22), default=None,
              help="ONNX opset. Default 18 (TensorRT 10.0 parses 9-20): bf16 convs then become MatMul "
                   "(patchify convs) or fp32 islands; 22 keeps bf16 Conv.")
@click.option("--calib", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of calibration images for fp16/bf16: ops whose fp32 output on them would leave fp16's "
                   "safe range stay fp32. Default: built-in synthetic images.")
@click.option("--format", "formats", default="onnx", show_default=True,
              help="Comma-separated: onnx, trt, triton-repo.")
@click.option("--batch", default="1:1:8", show_default=True, help="Batch range MIN:OPT:MAX (or N).")
@click.option("--height", default="256:512:1024", show_default=True, help="Height range MIN:OPT:MAX (or N).")
@click.option("--width", default=None, help="Width range (default: the height range).")
@click.option("--static", default=None, help="Fixed resolution HxW (e.g. 512x512) instead of H/W ranges.")
@click.option("--seg-output", type=click.Choice(["logits", "probs", "labels"]), default="logits", show_default=True,
              help="seg: add upsampled probabilities or argmax labels to the patch-resolution logits.")
@click.option("--uint8-input", is_flag=True, help="Input uint8 NHWC RGB, normalised in the graph.")
@click.option("--feature-layers", type=click.IntRange(min=0), default=0, show_default=True,
              help="features on ViT: also output the patch tokens of the last N blocks (N-1 extra outputs).")
@click.option("--trt-flavor", type=click.Choice(["auto", "tensorrt", "tensorrt-rtx"]), default="auto",
              show_default=True, help="auto: full TensorRT on a GPU machine that has it, else TensorRT-RTX (builds "
                                      "without a GPU; its engines do not run on Hopper).")
@trt_targets_option()
@click.option("--trt-workspace-gib", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Builder workspace limit in GiB. Default: no limit (the GPU's memory), which the largest "
                   "shapes need (vits16 at 8x1024x1024 asks for over 4 GiB).")
@click.option("--trt-opt-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="Builder optimisation level: higher searches more tactics (slower builds, maybe faster engines).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None, help="tensorrt timing cache file.")
@click.option("--deform-attn", type=click.Choice(["onnx", "plugin"]), default="onnx", show_default=True,
              help="Mask2Former deformable attention: standard ONNX ops (GridSample per level), or one "
                   "dinov3_deploy::ms_deform_attn TensorRT plugin node per layer (Triton kernel; engines with full "
                   "TensorRT only; verified here by the ONNX reference evaluator).")
@click.option("--attention", type=click.Choice(["onnx", "plugin"]), default="onnx", show_default=True,
              help="ViT attention as standard ONNX ops, or as dinov3_deploy::attention TensorRT plugin nodes "
                   "(Triton kernels; full TensorRT, --precision fp16/bf16 only).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random weights.")
@random_init_option("Random backbone initialisation: outliers adds trained-like tiny LayerScale gammas and massive "
                    "activations, to stress-test a low-precision export.")
@click.option("--no-verify", is_flag=True, help="Skip the parity check (not recommended).")
@overwrite_option("Replace an existing artifact at --out (only an artifact of this tool holding nothing else).")
@out_option(None, "Artifact directory (default: artifacts/<model>-<task>-<precision>).")
def command(task, model, weights, heads, n_classes, layers, precision, opset, calib, formats, batch, height, width,
            static, seg_output, uint8_input, feature_layers, trt_flavor, trt_targets, trt_workspace_gib, trt_opt_level,
            timing_cache, attention, deform_attn, seed, random_init, no_verify, overwrite, out) -> None:
    """Export a DINOv3 model to a verified deployment artifact."""
    from rich.markup import escape

    from dinov3_deploy.commands._progress import RichProgress, make_console
    from dinov3_deploy.export.pipeline import ExportParityError, export_artifact
    from dinov3_deploy.verification.verify import render_report

    console = make_console()
    if out is None:
        from dinov3_deploy.options import resolve_model

        named = resolve_model(model, weights, default=None if heads else DEFAULT_MODEL) or "head"
        if task is None and heads:
            from dinov3_deploy.model_source import head_task

            tasks = "+".join(head_task(h) for h in heads)
        else:
            tasks = (task or "seg").replace(",", "+")
        out = f"artifacts/{named}-{tasks}-{precision}"
    opts = ExportOptions(
        out=out, task=task, model=model, weights=weights, head=list(heads) or None, n_classes=n_classes,
        layers=layers, seed=seed,
        random_init=random_init, precision=precision, opset=opset, calib=calib, formats=formats, batch=batch,
        height=height, width=width, static=static,
        seg_output=seg_output, uint8_input=uint8_input, feature_layers=feature_layers,
        trt_flavor=trt_flavor,
        trt_targets=trt_targets,
        trt_workspace_gib=trt_workspace_gib, trt_opt_level=trt_opt_level, timing_cache=timing_cache,
        verify=not no_verify, overwrite=overwrite, attention=attention, deform_attn=deform_attn,
        random_backbone_ok=click.get_current_context().get_parameter_source("random_init").name == "COMMANDLINE",
    )
    try:
        path, report = export_artifact(opts, RichProgress(console))
    except ExportParityError as exc:
        render_report(exc.report, console)  # the table first, then the one-line error (exit 2)
        raise
    from dinov3_deploy.artifact import load_artifact

    art = load_artifact(path, check_hashes=False)
    for note in art.manifest.notes:
        console.print(f"[bold yellow]note:[/] {escape(note)}")
    if report is not None:
        render_report(report, console)
    else:
        console.print("[yellow]parity not verified (--no-verify); run `dinov3-deploy verify` on it[/]")
    console.print(f"[bold green]artifact written:[/] {path}  ({art.manifest.export_seconds}s)")

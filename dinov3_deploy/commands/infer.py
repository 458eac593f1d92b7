"""`dinov3-deploy infer ARTIFACT IMAGES... -o OUT`: predictions of a deployed artifact on images.

The options become an InferOptions; the run is runtime/batch.py's `run_infer` (one Predictor: images
go to the backend's device once, sliding windows are cut, run and stitched there, and only the results
come back to numpy)."""

from __future__ import annotations

import click

from dinov3_deploy.options import COMPILE_MODES, out_option, overwrite_option
from dinov3_deploy.runtime.backends import backend_help
from dinov3_deploy.runtime.batch import PARTIAL_FAILURE  # noqa: F401 - the partial-failure exit status
from dinov3_deploy.runtime.stitches import STITCHES


@click.command("infer", short_help="Predict with an artifact on images: masks, depth maps, classes, features.")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1)
@out_option(None, "Output folder. Each image's files mirror its path relative to the folder given, extension "
                  "included: IMAGES/sub/a.jpg -> OUT/sub/a.jpg_seg.png.", required=True)
@overwrite_option("Replace files in --out that this run writes (other files there are left alone).")
@click.option("--backend", default="auto", show_default=True,
              help=backend_help("infer", "auto | torch | onnxruntime | tensorrt, or a long name from "
                                "`dinov3-deploy verify` (onnxruntime-cpu, onnxruntime-cuda, ...)."))
@click.option("--demo", default=0, type=click.IntRange(0), help="Also run on N built-in synthetic images.")
@click.option("--window", default=None, type=click.IntRange(min=1),
              help="seg: sliding-window size, a multiple of the artifact's input multiple (default: its opt size).")
@click.option("--stride", default=None, type=click.IntRange(min=1), help="seg: window stride (default: 2/3 of the "
              "window; a stride above the window is clamped to it).")
@click.option("--batch-windows", default=None, type=click.IntRange(min=1),
              help="seg: windows per model call, within the artifact's batch range (default: up to 4).")
@click.option("--stitch", default="auto", show_default=True, type=click.Choice(STITCHES),
              help="seg: how window logits become labels: the Triton kernel on the device, or the reference "
                   "(PyTorch). auto: triton on a GPU, torch on the CPU. Mask2Former: chunked (auto; from the "
                   "class and mask logits in chunks) or torch (the graph's scores).")
@click.option("--attn", default=None, type=click.Choice(["sdpa", "triton"]),
              help="--backend torch: attention implementation (default: triton on a GPU, sdpa on the CPU; triton "
                   "on the CPU needs TRITON_INTERPRET=1).")
@click.option("--compile", "compile_mode", default=None, type=click.Choice(COMPILE_MODES),
              help="--backend torch: run the model through torch.compile in this mode.")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="On a GPU, replay one CUDA graph per input shape (torch and tensorrt backends); off: launch "
                   "every call eagerly.")
@click.option("--tta", is_flag=True, help="Mask2Former artifacts: the release's test-time augmentation (short side "
              "x 0.9..1.1 and mirrors, probabilities averaged); without it one view.")
def command(artifact, images, out, overwrite, backend, demo, window, stride, batch_windows, stitch, attn,
            compile_mode, cuda_graphs, tta) -> None:
    """Segmentation masks (official sliding-window protocol), depth maps, class scores or patch
    features for IMAGES (files, or folders read recursively), plus predictions.json in OUT.

    \b
    NAME: the image's path relative to the folder argument, extension included
    (the file name for a file argument; synthetic_N for --demo). Per image:
      seg       NAME_labels.png (class ids),
                NAME_seg.png (image | overlay | mask, with a class legend)
      depth     NAME_depth.npy (metres),
                NAME_depth.png (image | depth, with a colour bar in metres)
      cls       the top-5 classes, printed and in predictions.json
      features  NAME_patch_tokens.npy, NAME_pca.png

    A multi-head artifact (export --head A --head B, or --task seg,depth,cls) writes every
    task's files above for each image: seg from the sliding windows, the other tasks from one
    pass over the whole image (the same results as their single-head artifacts).

    Images that cannot be read or run are reported (name and reason) and the others still run;
    the exit status is then 1 and predictions.json lists the failures (2: a usage error)."""
    from rich.console import Console

    from dinov3_deploy.runtime.batch import InferOptions, run_infer

    opts = InferOptions(artifact=artifact, out=out, images=tuple(images), overwrite=overwrite, backend=backend,
                        demo=demo, window=window, stride=stride, batch_windows=batch_windows, stitch=stitch,
                        attn=attn, compile_mode=compile_mode, cuda_graphs=cuda_graphs, tta=tta)
    status = run_infer(opts, Console(stderr=True))
    if status:
        click.get_current_context().exit(status)

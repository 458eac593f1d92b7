"""`dinov3-deploy verify DIR`: parity of the chosen backends against the fp32 PyTorch reference;
`--per-block` says at which block a backend leaves it."""

from __future__ import annotations

import click

from dinov3_deploy.options import weights_option
from dinov3_deploy.runtime.backends import BACKEND_FAMILIES, BACKEND_NAMES, backend_help

#: Where --per-block writes unless --per-block-out says otherwise (git-ignored, like bench's out/bench).
PER_BLOCK_ROOT = "out"


@click.command("verify", short_help="Check an artifact's backends against the fp32 reference; rewrites its "
                                    "parity.json and manifest.json unless --no-write.")
@click.argument("artifact", type=click.Path(file_okay=False))
@weights_option("Backbone weights, if they moved since export (checked against the recorded sha256).")
@click.option("--head", default=None, type=click.Path(exists=True, file_okay=False),
              help="Head checkpoint directory, if it moved since export (checked against the recorded sha256).")
@click.option("--backend", "backend", default="auto", show_default=True,
              help=backend_help("verify", f"Comma-separated backends: auto, {', '.join(BACKEND_NAMES)} "
                                "(onnx-reference: numpy, runs bf16 on a CPU, small shapes), or a family: "
                                f"{', '.join(BACKEND_FAMILIES)}."))
@click.option("--per-block", is_flag=True,
              help="Also compare every ViT block's (ConvNeXt stage's) output with the reference, on the first "
                   "runnable chosen backend, through a debug copy of the graph; mark the first block over threshold.")
@click.option("--per-block-out", default=None, type=click.Path(file_okay=False),
              help="Where --per-block writes per_block.json and per_block.png (default: out/<artifact>-per-block, "
                   "git-ignored).")
@click.option("--no-write", is_flag=True, help="Do not rewrite the artifact's parity.json and manifest.json.")
def command(artifact, weights, head, backend, per_block, per_block_out, no_write) -> None:
    """Check an artifact's backends against the fp32 PyTorch reference and rewrite its parity.json and
    manifest.json with the result (unless --no-write); exit 1 when parity fails."""

    from pathlib import Path

    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.commands._progress import RichProgress, make_console
    from dinov3_deploy.runtime.backends import parse_backend_names
    from dinov3_deploy.runtime.runners import select_backends
    from dinov3_deploy.verification.verify import failure_message, render_report, verify_artifact

    parse_backend_names(backend)  # a bad name fails before anything is loaded
    console = make_console()
    progress = RichProgress(console)
    with progress.step(f"loading {artifact} (schema, sha256 of every file)"):
        art = load_artifact(artifact)
    backends = select_backends(art, backend)
    with progress.step("verifying parity against the fp32 PyTorch reference"):
        report = verify_artifact(art, weights=weights, head=head, backends=backends, log=progress.log)
    render_report(report, console)
    if not no_write:
        try:
            art.write_parity(report)
        except OSError as exc:
            console.print(f"[yellow]could not update {art.path}/parity.json ({exc}); the report above stands[/]")
    if per_block:
        from dinov3_deploy.verification.per_block import per_block_report, render_per_block, save_per_block

        default = Path(PER_BLOCK_ROOT) / f"{Path(artifact).resolve().name}-per-block"
        out = Path(per_block_out) if per_block_out else default
        with progress.step("per-block parity (debug copy of the graph with every block's output)"):
            pb = per_block_report(art, select_backends(art, backend), weights=weights, head=head, log=progress.log)
        render_per_block(pb, console)
        json_path, png_path = save_per_block(pb, out)
        console.print(f"per-block table: {json_path}" + (f", plot: {png_path}" if png_path else ""))
    if not report["passed"]:
        click.secho(f"error: {failure_message(report)}", fg="red", err=True)
        raise SystemExit(1)

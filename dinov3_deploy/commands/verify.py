"""`dinov3-deploy verify DIR`: parity of every runnable backend against the fp32 PyTorch reference."""

from __future__ import annotations

import click

from dinov3_deploy.options import weights_option


@click.command("verify")
@click.argument("artifact", type=click.Path(file_okay=False))
@weights_option("Backbone weights, if they moved since export (checked against the recorded sha256).")
@click.option("--head", default=None, type=click.Path(exists=True, file_okay=False),
              help="Head checkpoint directory, if it moved since export (checked against the recorded sha256).")
@click.option("--no-write", is_flag=True, help="Do not update the artifact's parity.json.")
def command(artifact, weights, head, no_write) -> None:
    """Check an artifact's backends against the fp32 PyTorch reference; exit 1 when parity fails."""

    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.commands._progress import RichProgress, make_console
    from dinov3_deploy.verification.verify import failure_message, render_report, verify_artifact

    console = make_console()
    progress = RichProgress(console)
    with progress.step(f"loading {artifact} (schema, sha256 of every file)"):
        art = load_artifact(artifact)
    with progress.step("verifying parity against the fp32 PyTorch reference"):
        report = verify_artifact(art, weights=weights, head=head, log=progress.log)
    render_report(report, console)
    if not no_write:
        try:
            art.write_parity(report)
        except OSError as exc:
            console.print(f"[yellow]could not update {art.path}/parity.json ({exc}); the report above stands[/]")
    if not report["passed"]:
        click.secho(f"error: {failure_message(report)}", fg="red", err=True)
        raise SystemExit(1)

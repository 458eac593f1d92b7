"""The tiny Mask2Former head (vit_tiny_test backbone, hidden 32, 5 classes) and its fp32 artifact, shared by
the M2F export, precision and run-time tests."""

from __future__ import annotations

from click.testing import CliRunner

from dinov3_deploy.cli import cli

M2F_SHAPE = ["--batch", "1:1:2", "--height", "64:64:96", "--width", "64:64:128"]  # verify: 2x64x64 and 96x128
SHAPE = M2F_SHAPE  # the export tests' name


def tiny_m2f_head(folder):
    """A random hidden-32, 5-class M2F head on vit_tiny_test (seed 0), saved as our head directory."""
    from dinov3_deploy.reference import create_segmentor
    from dinov3_deploy.reference.formats.m2f_checkpoint import save_m2f_head

    seg = create_segmentor("vit_tiny_test", hidden_dim=32, num_classes=5, seed=0)
    return save_m2f_head(folder / "head", seg, backbone="vit_tiny_test", backbone_seed=0)


def export_m2f(head, out, *extra: str):
    """`export --task seg --head HEAD` at M2F_SHAPE, unverified, to `out`."""
    res = CliRunner().invoke(cli, ["export", "--task", "seg", "--head", str(head), *M2F_SHAPE, "--no-verify",
                                   "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return out

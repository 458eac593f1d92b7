"""The tiny Mask2Former head the M2F export tests share (vit_tiny_test backbone, hidden 32, 5 classes)."""

from pathlib import Path

SHAPE = ["--batch", "1:1:2", "--height", "64:64:96", "--width", "64:64:128"]  # verify: 2x64x64 and 96x128


def tiny_m2f_head(folder: Path) -> Path:
    """Our head directory (it records its random backbone, seed 0) under `folder`."""
    from dinov3_deploy.reference import create_segmentor
    from dinov3_deploy.reference.formats.m2f_checkpoint import save_m2f_head

    seg = create_segmentor("vit_tiny_test", hidden_dim=32, num_classes=5, seed=0)
    return save_m2f_head(folder / "head", seg, backbone="vit_tiny_test", backbone_seed=0)

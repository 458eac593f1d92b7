"""`dinov3-deploy convert SRC DST --to official|hf|timm|safetensors [--model NAME]`.

Reads a checkpoint in any supported layout (Meta's .pth, a Hugging Face directory or file, timm,
our safetensors), converts it to the official layout, checks that it fits the model strictly,
converts it to the target layout, checks that the target converts back to the same weights, and
only then writes, atomically (a temporary name renamed into place)."""

from __future__ import annotations

from pathlib import Path

import click

TARGETS = ("official", "hf", "timm", "safetensors")
SOURCES = ("auto", "official", "hf", "timm")


def convert_checkpoint(src: Path, dst: Path, *, target: str, model: str | None = None, source: str = "auto",
                       force: bool = False, echo=lambda msg: None) -> Path:
    """The whole conversion; returns the path written. Raises DeployError subclasses.
    Without `model`, the backbone is told from SRC (see `identify_backbone`)."""
    import torch

    from dinov3_deploy.errors import DeployError
    from dinov3_deploy.reference import build_backbone, get_config
    from dinov3_deploy.reference.factory import config_for_weights
    from dinov3_deploy.reference.formats import checkpoints as ck
    from dinov3_deploy.reference.formats.identify import identify_backbone

    if not src.exists():
        raise DeployError(f"checkpoint not found: {src}")
    if model is None:
        model, how = identify_backbone(src)
        if model is None:
            raise DeployError(f"cannot tell which backbone {src} holds; pass --model (see `dinov3-deploy models`)")
        echo(f"model: {model} ({how})")
    cfg = get_config(model)
    _check_destination(dst, target, force)
    sd = ck.read_state_dict(src)
    layout = ck.detect_source(sd) if source == "auto" else source
    official = ck.to_official(sd, cfg, layout)
    cfg = config_for_weights(cfg, official)
    meta_model = build_backbone(cfg, device=torch.device("meta"))
    ck.check_fits(meta_model, official, what=f"{src} (read as the '{layout}' layout)")
    official = ck.repair_bias_masks(official)

    if target in ("hf", "timm"):
        out = ck.from_official(official, cfg, target)
        back = ck.to_official(out, cfg, target)
        ck.check_fits(meta_model, back, what=f"the {target} conversion")
        _same_network(official, back, cfg)
        _note_lost_periods(official, cfg, target, echo)
    else:
        out = official

    meta = {"dinov3_deploy.model": model, "dinov3_deploy.layout": target if target in ("hf", "timm") else "official",
            "dinov3_deploy.converted_from": layout}
    if target == "hf" and dst.suffix != ".safetensors":
        from safetensors.torch import save_file

        from dinov3_deploy.atomic import atomic_dir, write_json
        from dinov3_deploy.reference.formats.convert_hf import hf_config

        tensors = ck.own_storage(out)
        with atomic_dir(dst, overwrite=force, ours=hf_folder_foreign_files, what="a Hugging Face folder") as tmp:
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", **meta})
            write_json(tmp / "config.json", hf_config(cfg))
    elif dst.suffix == ".safetensors":
        ck.save_state_dict(out, dst, metadata=meta)
    else:
        ck.save_state_dict(out, dst)
    echo(f"wrote {dst} ({target} layout, {len(out)} tensors, from the '{layout}' layout of {src})")
    return dst





def _check_destination(dst: Path, target: str, force: bool) -> None:
    from dinov3_deploy.atomic import check_replaceable
    from dinov3_deploy.errors import DeployError

    suffix = dst.suffix
    if target == "official" and suffix not in (".pth", ".pt"):
        raise DeployError(f"--to official writes a .pth file (got '{dst.name}'); for .safetensors use --to safetensors")
    if target == "safetensors" and suffix != ".safetensors":
        raise DeployError(f"--to safetensors writes a .safetensors file (got '{dst.name}')")
    if target == "timm" and suffix not in (".pth", ".pt", ".safetensors"):
        raise DeployError(f"--to timm writes a .pth or .safetensors file (got '{dst.name}')")
    if target == "hf" and suffix not in ("", ".safetensors"):
        raise DeployError(f"--to hf writes a directory or a .safetensors file (got '{dst.name}')")
    if target == "hf" and suffix == "":
        check_replaceable(dst.resolve(), force, hf_folder_foreign_files, "a Hugging Face folder")
    elif dst.is_dir():
        raise DeployError(f"{dst} is a directory; --to {target} writes a file: choose a file name")
    elif dst.exists() and not force:
        raise DeployError(f"{dst} exists; pass --overwrite to replace it")


HF_FILES = ("model.safetensors", "config.json")


def hf_folder_foreign_files(folder: Path) -> list[str] | None:
    """Files of an HF folder that `convert` did not write; None when `convert` did not write the
    folder at all (its model.safetensors carries our metadata: the mark of ours)."""
    from dinov3_deploy.reference.formats.checkpoints import read_metadata

    weights = folder / "model.safetensors"
    try:
        ours = "dinov3_deploy.layout" in read_metadata(weights)
    except Exception:  # noqa: BLE001 - unreadable means: not provably ours
        ours = False
    if not ours:
        return None
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).as_posix() not in HF_FILES)


def _same_network(official: dict, back: dict, cfg) -> None:
    """The target layout must hold the same network: every tensor back unchanged, except what the
    foreign layouts cannot carry and recompute or fix (RoPE periods, the masked K bias, the
    training-only local_cls_norm and mask_token)."""
    import torch

    from dinov3_deploy.errors import CheckpointError

    lossy = ("rope_embed.periods", "local_cls_norm.", "mask_token")
    for k, v in official.items():
        if k.startswith(lossy) or k.endswith("bias_mask"):
            continue
        w = back[k]
        if k.endswith("attn.qkv.bias") and k[: -len("bias")] + "bias_mask" in official:
            mask = official[k[: -len("bias")] + "bias_mask"].to(v.dtype)
            v, w = v * mask, w * back[k[: -len("bias")] + "bias_mask"].to(w.dtype)
        if v.shape != w.shape or not torch.equal(v, w):
            raise CheckpointError(f"conversion check failed: '{k}' does not survive the round trip (a bug; report it)")


def _note_lost_periods(official: dict, cfg, target: str, echo) -> None:
    import torch

    from dinov3_deploy.reference.formats.convert_hf import rope_periods

    stored = official.get("rope_embed.periods")
    if stored is None:
        return
    exact = rope_periods(cfg)
    if not torch.equal(stored.float(), exact):
        rel = ((stored.float() - exact).abs() / exact).max().item()
        echo(f"note: this checkpoint's RoPE periods differ from the fp32 formula by up to {rel:.1e} (Meta's files "
             f"store them rounded through bf16). {target} recomputes them, so its features will differ slightly "
             "from the official model's; our models load the stored values.")


@click.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Choice(TARGETS), required=True,
              help="official: Meta's .pth layout; hf: transformers directory (model.safetensors + config.json) "
                   "or .safetensors file; timm: Eva/ConvNeXt state dict; safetensors: the official layout as "
                   ".safetensors with the model name in its metadata.")
@click.option("--model", "model", default=None,
              help="Backbone name, e.g. vitb16 (see `dinov3-deploy models`). Default: told from SRC (our "
                   "safetensors metadata, a Hugging Face config.json, or Meta's file name).")
@click.option("--source", type=click.Choice(SOURCES), default="auto", show_default=True,
              help="Layout of SRC; auto detects it from the key names.")
@click.option("--overwrite", "--force", "overwrite", is_flag=True,
              help="Replace DST if it exists (an HF folder only when this tool wrote it and it holds nothing else).")
def command(src: Path, dst: Path, target: str, model: str | None, source: str, overwrite: bool) -> None:
    """Convert a DINOv3 checkpoint SRC between layouts, verified before DST is (atomically) written."""
    convert_checkpoint(src, dst, target=target, model=model, source=source, force=overwrite,
                       echo=lambda msg: click.echo(msg, err=msg.startswith("note:")))

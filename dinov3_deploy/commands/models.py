"""`dinov3-deploy models`: the backbone registry and the Mask2Former segmentor configurations as tables
(parameters counted on the meta device)."""

from __future__ import annotations

import json

import click


def registry_rows(include_test: bool = False) -> list[dict]:
    import torch

    from dinov3_deploy.reference import build_backbone, count_parameters, get_config, list_backbones

    rows = []
    for name in list_backbones(include_test=include_test):
        cfg = get_config(name)
        params = count_parameters(build_backbone(cfg, device=torch.device("meta")))
        row = {"name": name, "family": cfg.family, "params_m": round(params / 1e6, 1), "dim": cfg.embed_dim}
        if cfg.family == "vit":
            row.update(depth=cfg.depth, heads=cfg.num_heads, ffn=f"{cfg.ffn_layer.upper()} {cfg.ffn_hidden}")
        else:
            row.update(depth="+".join(map(str, cfg.depths)), heads="-", ffn=f"MLP x4 ({'/'.join(map(str, cfg.dims))})")
        rows.append(row)
    return rows


def segmentor_rows(include_test: bool = False) -> list[dict]:
    """One row per Mask2Former segmentor configuration: parameters in all and per part (millions)."""
    from dinov3_deploy.reference import create_segmentor
    from dinov3_deploy.reference.configs import SEGMENTORS, SEGMENTORS_TEST

    def millions(module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6

    rows = []
    for cfg in SEGMENTORS + (SEGMENTORS_TEST if include_test else ()):
        model = create_segmentor(cfg.backbone, hidden_dim=cfg.hidden_dim, num_classes=cfg.num_classes, device="meta")
        adapter, head = model.segmentation_model
        backbone = millions(model.backbone)
        rows.append({
            "name": cfg.name, "family": "m2f-segmentor", "backbone": cfg.backbone, "hidden_dim": cfg.hidden_dim,
            "num_classes": cfg.num_classes, "layers": model.layers, "params_m": round(millions(model), 1),
            "head_m": round(millions(model) - backbone, 1), "adapter_m": round(millions(adapter) - backbone, 1),
            "pixel_decoder_m": round(millions(head.pixel_decoder), 1),
            "transformer_decoder_m": round(millions(head.predictor), 1), "weights": cfg.weights or "-",
        })
    return rows


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--all", "include_test", is_flag=True, help="Include the tiny test configurations.")
def command(as_json: bool, include_test: bool) -> None:
    """List the DINOv3 backbones and Mask2Former segmentor configurations this tool knows."""
    rows = registry_rows(include_test)
    segmentors = segmentor_rows(include_test)
    if as_json:  # one list: segmentor rows have family "m2f-segmentor"
        click.echo(json.dumps(rows + segmentors, indent=2))
        return
    from rich.table import Table

    from dinov3_deploy.commands._progress import make_console

    table = Table(title="DINOv3 backbones")
    for col, justify in (("name", "left"), ("family", "left"), ("params (M)", "right"), ("dim", "right"),
                         ("depth", "right"), ("heads", "right"), ("FFN", "left")):
        # fold, never "…": on a narrow terminal a cell wraps onto the next line but keeps every character
        table.add_column(col, justify=justify, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["family"], f"{r['params_m']:.1f}", str(r["dim"]), str(r["depth"]),
                      str(r["heads"]), r["ffn"])
    console = make_console()
    console.print(table)
    console.print(_segmentor_table(segmentors))


def _segmentor_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="Mask2Former segmentors (ViT-Adapter + Mask2Former; head = all but the backbone)")
    cols = (("name", "left"), ("backbone layers", "left"), ("hidden", "right"), ("params (M)", "right"),
            ("head (M)", "right"), ("adapter", "right"), ("pixel dec.", "right"), ("transf. dec.", "right"),
            ("release weights", "left"))
    for col, justify in cols:
        table.add_column(col, justify=justify, overflow="fold")
    for r in rows:
        table.add_row(r["name"], f"{r['backbone']} {r['layers']}", str(r["hidden_dim"]), f"{r['params_m']:.1f}",
                      f"{r['head_m']:.1f}", f"{r['adapter_m']:.1f}", f"{r['pixel_decoder_m']:.1f}",
                      f"{r['transformer_decoder_m']:.1f}", r["weights"])
    return table

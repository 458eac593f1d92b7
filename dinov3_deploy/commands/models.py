"""`dinov3-deploy models`: the backbone registry as a table (parameters counted on the meta device)."""

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


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--all", "include_test", is_flag=True, help="Include the tiny test configurations.")
def command(as_json: bool, include_test: bool) -> None:
    """List the DINOv3 backbones this tool knows."""
    rows = registry_rows(include_test)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
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
    make_console().print(table)

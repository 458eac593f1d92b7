import json

from click.testing import CliRunner

from dinov3_deploy.cli import cli
from dinov3_deploy.reference import list_backbones


def test_models_json_lists_registry_with_params():
    res = CliRunner().invoke(cli, ["models", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["vitl16"]["params_m"] == 303.2 and rows["vitl16"]["heads"] == 16
    assert rows["vits16plus"]["ffn"] == "SWIGLU 1536"
    assert rows["convnext_large"]["family"] == "convnext"


def test_models_table_to_a_file_is_not_truncated(monkeypatch):
    # CliRunner's output is not a terminal, like `dinov3-deploy models --all > models.txt`: rich used
    # to fit the table to 80 columns there and print `vit_tiny_te…`.
    monkeypatch.delenv("COLUMNS", raising=False)
    res = CliRunner().invoke(cli, ["models", "--all"])
    assert res.exit_code == 0, res.output
    assert "…" not in res.output
    cells = {cell.strip() for line in res.output.splitlines() for cell in line.split("│")}
    for name in list_backbones(include_test=True):
        assert name in cells, name
    assert "MLP x4 (192/384/768/1536)" in cells  # the widest cell, whole


def test_models_table_on_a_narrow_console_folds_instead_of_cutting(monkeypatch):
    monkeypatch.setenv("COLUMNS", "50")
    res = CliRunner().invoke(cli, ["models", "--all"])
    assert res.exit_code == 0, res.output
    assert "…" not in res.output
    first_col = "".join(line.split("│")[1].strip() for line in res.output.splitlines() if line.count("│") > 2)
    assert "".join(list_backbones(include_test=True)) in first_col

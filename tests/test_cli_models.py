import json

from click.testing import CliRunner

from dinov3_deploy.cli import cli


def test_models_json_lists_registry_with_params():
    res = CliRunner().invoke(cli, ["models", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["vitl16"]["params_m"] == 303.2 and rows["vitl16"]["heads"] == 16
    assert rows["vits16plus"]["ffn"] == "SWIGLU 1536"
    assert rows["convnext_large"]["family"] == "convnext"


def test_models_table_renders():
    res = CliRunner().invoke(cli, ["models"])
    assert res.exit_code == 0 and "vit7b16" in res.output

"""Multi-head artifacts: `export --head A --head B ...` (or `--task seg,depth,cls` for random heads) writes
ONE graph in which the backbone runs once and every head reads its blocks; its outputs are the single-head
artifacts' outputs, named <task>.<output>."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from dinov3_deploy.cli import cli

MODEL = "vit_tiny_test"
SHAPES = ["--batch", "1:1:2", "--height", "32:64:96"]
HEADS = {  # task -> build_task_model arguments of a head "trained" on random backbone seed 3
    "seg": dict(n_classes=5, layers="four_last"),
    "depth": dict(layers="four_even"),  # the bins head; both it and seg read blocks 0-3, computed once
    "cls": dict(n_classes=7),
}


def _save_heads(root, backbone_seed: int, tasks=("seg", "depth", "cls")) -> dict[str, str]:
    """Head checkpoints as the trainer writes them, with release-like random heads (weights that can
    fail parity) on the random backbone of `backbone_seed`."""
    from dinov3_deploy.reference.factory import build_task_model, random_backbone
    from dinov3_deploy.reference.head_checkpoint import save_head_checkpoint

    backbone = random_backbone(MODEL, backbone_seed)
    paths = {}
    for i, task in enumerate(tasks):
        tm = build_task_model(task, backbone, seed=10 + i, **HEADS[task])
        paths[task] = str(save_head_checkpoint(root / f"{task}-head-{backbone_seed}", tm, backbone_seed=backbone_seed))
    return paths


def _export(out, *args: str):
    res = CliRunner().invoke(cli, ["export", "--model", MODEL, *SHAPES, "--out", str(out), *args])
    return res


def _run(art, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x})))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three heads on one backbone, the multi-head artifact (verified at export) and each single-head one."""
    root = tmp_path_factory.mktemp("multi")
    heads = _save_heads(root, backbone_seed=3)
    multi = root / "multi"
    res = _export(multi, "--head", heads["seg"], "--head", heads["depth"], "--head", heads["cls"],
                  "--format", "onnx,trt,triton-repo", "--trt-flavor", "tensorrt-rtx")
    assert res.exit_code == 0, res.output
    singles = {}
    for task, head in heads.items():
        singles[task] = root / f"single-{task}"
        # static resolution: these only supply reference outputs at 64x96 (a static export is ~2x faster)
        res = _export(singles[task], "--head", head, "--no-verify", "--static", "64x96")
        assert res.exit_code == 0, res.output
    return heads, multi, singles


def test_one_graph_gives_every_single_head_artifacts_outputs(trained):
    _, multi, singles = trained
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32)
    got = _run(multi, x)
    assert list(got) == ["seg.logits", "depth.depth", "cls.logits"]
    for task, art in singles.items():
        for name, want in _run(art, x).items():
            out = got[f"{task}.{name}"]
            assert out.shape == want.shape
            rel = np.linalg.norm(out - want) / np.linalg.norm(want)
            assert rel <= 1e-5, (task, name, rel)


def test_the_graph_holds_one_backbone(trained):
    _, multi, singles = trained
    ops = lambda art: json.loads((art / "manifest.json").read_text())["onnx"]["graph"]["op_counts"]
    # explicit-softmax attention: one Softmax per block; three backbones would triple it
    assert ops(multi)["Softmax"] == ops(singles["seg"])["Softmax"] == 4  # vit_tiny_test has 4 blocks


def test_manifest_lists_the_heads_and_verify_checks_every_output(trained):
    heads, multi, _ = trained
    m = json.loads((multi / "manifest.json").read_text())
    assert m["task"] == "multi" and m["head"] is None
    assert [(h["task"], h["outputs"], h["checkpoint"]) for h in m["heads"]] == [
        ("seg", ["seg.logits"], heads["seg"]), ("depth", ["depth.depth"], heads["depth"]),
        ("cls", ["cls.logits"], heads["cls"])]
    assert m["heads"][0]["classes"]["names"] == [] or len(m["heads"][0]["classes"]["names"]) == 5
    parity = json.loads((multi / "parity.json").read_text())
    ort_rows = next(b for b in parity["backends"] if b["name"] == "onnxruntime-cpu")["outputs"]
    assert {r["output"] for r in ort_rows} == {"seg.logits", "depth.depth", "cls.logits"}
    seg = [r for r in ort_rows if r["output"] == "seg.logits"]
    assert seg and all(r["label_agreement"] == 1.0 for r in seg)  # seg outputs are judged as seg
    res = CliRunner().invoke(cli, ["verify", str(multi), "--backend", "onnxruntime"])
    assert res.exit_code == 0, res.output
    assert "seg.logits" in res.output and "cls.logits" in res.output


def test_one_engine_and_the_triton_config_carry_every_output(trained):
    _, multi, _ = trained
    m = json.loads((multi / "manifest.json").read_text())
    outs = {t["name"] for t in m["tensorrt"]["io"] if t["mode"] == "output"}
    assert outs == {"seg.logits", "depth.depth", "cls.logits"}
    (model,) = [x["name"] for x in m["triton"]["models"] if x["backend"] == "onnxruntime"]
    config = (multi / m["triton"]["dir"] / model / "config.pbtxt").read_text()
    for name in outs:
        assert f'name: "{name}"' in config


def test_heads_trained_on_different_backbones_are_refused_before_any_work(tmp_path):
    a = _save_heads(tmp_path, backbone_seed=3, tasks=("seg",))
    b = _save_heads(tmp_path, backbone_seed=4, tasks=("depth",))
    out = tmp_path / "mixed"
    res = _export(out, "--head", a["seg"], "--head", b["depth"])
    assert res.exit_code == 2
    assert "different backbones" in res.output and "seed 3" in res.output and "seed 4" in res.output
    assert not out.exists()


def test_two_heads_of_one_task_and_a_task_list_that_contradicts_the_heads_are_refused(tmp_path):
    a = _save_heads(tmp_path, backbone_seed=3, tasks=("seg", "cls"))
    (tmp_path / "again").mkdir()
    b = _save_heads(tmp_path / "again", backbone_seed=3, tasks=("seg",))
    res = _export(tmp_path / "o1", "--head", a["seg"], "--head", b["seg"])
    assert res.exit_code == 2 and "two heads for task 'seg'" in res.output
    res = _export(tmp_path / "o2", "--head", a["seg"], "--head", a["cls"], "--task", "seg,depth")
    assert res.exit_code == 2 and "does not match the heads' tasks" in res.output
    res = _export(tmp_path / "o3", "--task", "seg,seg")
    assert res.exit_code == 2 and "twice" in res.output
    res = _export(tmp_path / "o4", "--task", "seg,features", "--feature-layers", "2")
    assert res.exit_code == 2 and "--feature-layers" in res.output


def test_random_multi_head_demo_with_labels_output(tmp_path):
    """`--task seg,depth,cls` without heads: random heads for a demo, verified like any export."""
    out = tmp_path / "demo"
    res = _export(out, "--task", "seg,depth,cls,features", "--seg-output", "labels", "--static", "64x64")
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    assert [o["name"] for o in m["outputs"]] == ["seg.logits", "seg.labels", "depth.depth", "cls.logits",
                                                 "features.cls", "features.storage", "features.patch"]
    assert m["outputs"][1]["dtype"] == "int32"
    assert any("RANDOM WEIGHTS" in n for n in m["notes"])
    assert json.loads((out / "parity.json").read_text())["passed"] is True

"""A head runs only on the backbone it was trained on: the recorded weights (found again by path
and hash) or the recorded random seed, never a silently different one (that once shipped a head
trained on real weights on a random backbone, 'verified')."""

import json

import pytest
import torch
from click.testing import CliRunner

from dinov3_deploy.cli import cli
from dinov3_deploy.errors import CheckpointError
from dinov3_deploy.reference.factory import build_task_model, random_backbone
from dinov3_deploy.reference.formats.checkpoints import save_state_dict
from dinov3_deploy.reference.head_checkpoint import backbone_for_head, load_task_model, save_head_checkpoint
from dinov3_deploy.reference.models.layers import LayerScale


def _weights(path, seed):
    meta = {"dinov3_deploy.model": "vit_tiny_test"}  # as `convert --to safetensors` writes: names its model
    save_state_dict(random_backbone("vit_tiny_test", seed).state_dict(), path, metadata=meta)
    return path


def _head_on(tmp_path, weights):
    model = build_task_model("seg", "vit_tiny_test", n_classes=3, backbone_weights=weights)
    return save_head_checkpoint(tmp_path / "head", model, backbone_weights=weights)


def test_recorded_weights_are_used_and_checked(tmp_path):
    w = _weights(tmp_path / "w.safetensors", 3)
    head = _head_on(tmp_path, w)
    loaded = load_task_model(head)  # no --weights: the recorded file, hash checked
    expected = random_backbone("vit_tiny_test", 3)
    assert torch.equal(loaded.backbone.cls_token, expected.cls_token)

    moved = tmp_path / "moved.safetensors"
    w.rename(moved)
    with pytest.raises(CheckpointError, match=r"w\.safetensors.*not there any more.*--weights"):
        load_task_model(head)
    assert backbone_for_head(head, moved) == (str(moved), None)  # the same bytes elsewhere: accepted

    other = _weights(tmp_path / "other.safetensors", 4)
    with pytest.raises(CheckpointError, match="is not the backbone"):
        load_task_model(head, other)
    moved.rename(w)
    _weights(w, 5)  # same path, different content
    with pytest.raises(CheckpointError, match="has changed since"):
        load_task_model(head)


def test_random_backbone_heads_refuse_real_weights(tmp_path):
    model = build_task_model("seg", random_backbone("vit_tiny_test", 7), n_classes=3)
    head = save_head_checkpoint(tmp_path / "head", model, backbone_seed=7)
    with pytest.raises(CheckpointError, match=r"random backbone \(seed 7\)"):
        load_task_model(head, _weights(tmp_path / "w.safetensors", 1))


def test_heads_recording_no_backbone_need_weights(tmp_path):
    head = save_head_checkpoint(tmp_path / "head", build_task_model("seg", "vit_tiny_test", n_classes=3))
    with pytest.raises(CheckpointError, match="pass --weights"):
        load_task_model(head)


def test_old_random_backbone_heads_are_refused(tmp_path):
    head = save_head_checkpoint(tmp_path / "head", build_task_model("seg", "vit_tiny_test", n_classes=3),
                                backbone_seed=0)
    cfg = json.loads((head / "config.json").read_text())
    cfg["version"] = 1  # format 1 heads were trained on the training-init random backbone
    (head / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="older dinov3-deploy.*retrain"):
        load_task_model(head)


def test_trainer_and_export_share_one_random_backbone(tmp_path):
    """The trainer's random backbone is the policy's (release-like, not the near-identity training
    init) and the one `--head` rebuilds."""
    from dinov3_deploy.reference.training.trainer import TrainConfig, build_model

    model = build_model(TrainConfig(out=str(tmp_path), seed=11), ["a", "b", "c"], [[0, 0, 0]] * 3)
    policy = random_backbone("vit_tiny_test", 11)
    for (k, a), b in zip(model.backbone.state_dict().items(), policy.state_dict().values()):
        assert torch.equal(a, b), k
    gammas = torch.cat([m.gamma for m in model.backbone.modules() if isinstance(m, LayerScale)])
    assert gammas.min() > 1e-2  # trained-scale LayerScale, not the release's 1e-5 init
    head = save_head_checkpoint(tmp_path / "head", model, backbone_seed=11)
    assert torch.equal(load_task_model(head).backbone.blocks[0].attn.qkv.weight, policy.blocks[0].attn.qkv.weight)


def test_export_of_a_head_trained_on_weights_uses_them(tmp_path):
    """End to end through the CLI: `train --weights W` then `export --head H` without --weights
    exports W (not a random backbone); with W gone it refuses and names W, writing nothing."""
    w = _weights(tmp_path / "w.safetensors", 2)
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "--weights", str(w), "--iters", "2", "--train-size", "8", "--val-size", "2",
                               "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["export", "--head", str(tmp_path / "run"), "--static", "64x64", "--batch", "1",
                               "--out", str(tmp_path / "art")])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["source"]["weights"] == str(w.resolve())
    assert "RANDOM" not in " ".join(manifest.get("notes") or [])
    w.unlink()
    res = runner.invoke(cli, ["export", "--head", str(tmp_path / "run"), "--out", str(tmp_path / "art2")])
    assert res.exit_code == 2 and "w.safetensors" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "art2").exists()


def test_a_head_trained_on_the_outliers_backbone_exports_on_it(tmp_path):
    """`train --random-init outliers` records the init; export and the head loader rebuild that
    backbone (not the release-like one of the same seed), and the manifest says which it is."""
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "--random-init", "outliers", "--iters", "2", "--train-size", "8",
                               "--val-size", "2", "--seed", "3", "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    head = tmp_path / "run" / "head"
    assert json.loads((head / "config.json").read_text())["backbone_init"] == "outliers"
    stress, plain = random_backbone("vit_tiny_test", 3, init="outliers"), random_backbone("vit_tiny_test", 3)
    loaded = load_task_model(head).backbone
    for (k, a), b in zip(loaded.state_dict().items(), stress.state_dict().values()):
        assert torch.equal(a, b), k
    assert not all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), plain.state_dict().values()))
    res = runner.invoke(cli, ["export", "--head", str(head), "--static", "64x64", "--batch", "1", "--no-verify",
                               "--out", str(tmp_path / "art")])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["source"]["init"] == "outliers" and "outliers" in " ".join(manifest["notes"])
    res = runner.invoke(cli, ["export", "--head", str(head), "--random-init", "release-like", "--static", "64x64",
                               "--no-verify", "--out", str(tmp_path / "art2")])
    assert res.exit_code == 0, res.output  # the default value: the head's own init is used
    assert json.loads((tmp_path / "art2" / "manifest.json").read_text())["source"]["init"] == "outliers"


def test_random_init_is_refused_with_weights_in_train(tmp_path):
    w = _weights(tmp_path / "w.safetensors", 2)
    res = CliRunner().invoke(cli, ["train", "--weights", str(w), "--random-init", "outliers",
                                   "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "--random-init" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()

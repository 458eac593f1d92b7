"""Head checkpoints: round trip, only the head is stored, atomic replace, clear errors."""

import json

import pytest
import torch

from dinov3_deploy.errors import CheckpointError
from dinov3_deploy.reference.factory import build_task_model
from dinov3_deploy.reference.head_checkpoint import load_task_model, read_head_config, save_head_checkpoint


def _randomise(model):
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_()
        for name, b in model.head.named_buffers():
            if "running_var" in name:
                b.uniform_(0.5, 2.0)
            elif "running_mean" in name:
                b.normal_()
    return model


@pytest.mark.parametrize(
    "task, backbone, kwargs",
    [
        ("seg", "vit_tiny_test", {"n_classes": 5, "layers": "four_last"}),
        ("seg", "convnext_tiny_test", {"n_classes": 3}),
        ("cls", "vit_tiny_test", {"n_classes": 7}),
        ("depth", "vit_tiny_test", {"n_bins": 16}),
    ],
)
def test_round_trip(tmp_path, task, backbone, kwargs):
    torch.manual_seed(0)
    model = _randomise(build_task_model(task, backbone, **kwargs))
    backbone_sd = model.backbone.state_dict()
    save_head_checkpoint(tmp_path / "ck", model, extra={"miou": 12.5})
    loaded = load_task_model(tmp_path / "ck", backbone_weights=backbone_sd)
    assert not loaded.training
    assert loaded.spec == model.spec
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = model(x), loaded(x)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k])
    assert read_head_config(tmp_path / "ck")["extra"] == {"miou": 12.5}


def test_only_head_tensors_and_atomic_replace(tmp_path):
    from safetensors.torch import load_file

    model = build_task_model("seg", "vit_tiny_test", n_classes=4)
    save_head_checkpoint(tmp_path / "ck", model)
    keys = set(load_file(str(tmp_path / "ck" / "head.safetensors")))
    assert keys == set(model.head.state_dict())
    assert not any("blocks" in k or "patch_embed" in k for k in keys)
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["spec"]["backbone"] == "vit_tiny_test" and cfg["spec"]["n_classes"] == 4
    # overwrite with a different head: the directory is replaced, no temporary left behind
    model2 = build_task_model("seg", "vit_tiny_test", n_classes=6)
    save_head_checkpoint(tmp_path / "ck", model2)
    assert read_head_config(tmp_path / "ck")["spec"]["n_classes"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    # a training output directory with the checkpoint in head/ is accepted too
    save_head_checkpoint(tmp_path / "run" / "head", model2, backbone_seed=0)
    assert load_task_model(tmp_path / "run").spec.n_classes == 6


def test_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_task_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_task_model(tmp_path / "empty")
    model = build_task_model("seg", "vit_tiny_test", n_classes=4)
    save_head_checkpoint(tmp_path / "ck", model, backbone_seed=0)
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["spec"]["n_classes"] = 9  # config no longer matches the weights
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_task_model(tmp_path / "ck")
    from safetensors.torch import save_file

    save_file({"foo": torch.zeros(1)}, str(tmp_path / "ck" / "head.safetensors"))
    with pytest.raises(CheckpointError, match="missing .*unexpected"):
        load_task_model(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="not a dinov3-deploy-head"):
        load_task_model(tmp_path / "ck")


def test_seeded_random_backbone_is_rebuilt(tmp_path):
    from dinov3_deploy.reference.factory import random_backbone

    backbone = random_backbone("vit_tiny_test", seed=5)
    model = build_task_model("seg", backbone, n_classes=3)
    save_head_checkpoint(tmp_path / "ck", model, backbone_seed=5)
    state = torch.random.get_rng_state()
    loaded = load_task_model(tmp_path / "ck")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    for (k, a), b in zip(backbone.state_dict().items(), loaded.backbone.state_dict().values()):
        assert torch.equal(a, b), k
    assert not torch.equal(random_backbone("vit_tiny_test", seed=6).cls_token, backbone.cls_token)

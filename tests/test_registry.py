"""The registry matches the release's architecture table (docs/dinov3-semantics.md), counted on the meta device."""

import pytest
import torch

from dinov3_deploy.reference import build_backbone, count_parameters, get_config, list_backbones

PUBLISHED_M = {
    "vits16": 21.6, "vits16plus": 28.7, "vitb16": 85.7, "vitl16": 303.2, "vitl16plus": 403.9,
    "vith16plus": 840.6, "vit7b16": 6716.0,
    "convnext_tiny": 27.8, "convnext_small": 49.5, "convnext_base": 87.6, "convnext_large": 196.2,
}


def test_registry_lists_all_released_models():
    assert sorted(list_backbones()) == sorted(PUBLISHED_M)


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_parameter_count_matches_release(name):
    model = build_backbone(name, device=torch.device("meta"))
    assert abs(count_parameters(model) / 1e6 - PUBLISHED_M[name]) <= 0.1


@pytest.mark.parametrize(
    "name,hidden",
    [("vits16", 1536), ("vits16plus", 1536), ("vitl16plus", 4096), ("vith16plus", 5120), ("vit7b16", 8192)],
)
def test_ffn_hidden_sizes(name, hidden):
    assert get_config(name).ffn_hidden == hidden


def test_7b_differences_on_meta():
    m = build_backbone("vit7b16", device=torch.device("meta"))
    sd = m.state_dict()
    assert "blocks.0.attn.qkv.bias" not in sd and "blocks.0.attn.qkv.bias_mask" not in sd
    assert "local_cls_norm.weight" in sd
    assert m.blocks[0].attn.head_dim == 128
    assert sd["rope_embed.periods"].shape == (32,)


def test_unknown_model_name_lists_known_ones():
    from dinov3_deploy.errors import DeployError

    with pytest.raises(DeployError, match="vitb16"):
        get_config("vitz16")

"""Release-like random weights make parity checks meaningful: with the training init a random
ViT is nearly the identity around each residual and a wrong RoPE goes unnoticed."""

import pytest
import torch

from dinov3_deploy.reference import create_backbone


@torch.no_grad()
def _rope_sensitivity(init: str) -> float:
    torch.manual_seed(0)
    m = create_backbone("vit_tiny_test", init=init)
    x = torch.randn(1, 3, 48, 64)
    a = m.forward_features(x)["x_norm_patchtokens"]
    m.rope_embed.periods.mul_(3.0)  # a wrong RoPE, as a broken export would compute
    b = m.forward_features(x)["x_norm_patchtokens"]
    return float((a - b).norm() / a.norm())


def test_release_like_init_makes_attention_and_rope_matter():
    assert _rope_sensitivity("train") < 1e-6  # why the training init cannot serve parity checks
    assert _rope_sensitivity("release-like") > 0.05


def test_release_like_init_is_seeded_and_only_for_random_weights():
    torch.manual_seed(3)
    a = create_backbone("convnext_tiny_test", init="release-like").state_dict()
    torch.manual_seed(3)
    b = create_backbone("convnext_tiny_test", init="release-like").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    gammas = [v for k, v in a.items() if k.endswith("gamma")]
    assert gammas and all(0.05 <= float(g.min()) and float(g.max()) <= 0.6 for g in gammas)
    # Given weights win: the init applies to random weights only.
    c = create_backbone("convnext_tiny_test", a, init="release-like").state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="release-like"):
        create_backbone("vit_tiny_test", init="xavier")

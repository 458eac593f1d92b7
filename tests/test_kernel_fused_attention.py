"""rope_attention (qkv + RoPE + attention) and the whole model path attn_impl="triton"."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import

from parity_helpers import rel_err  # noqa: E402

from dinov3_deploy.kernels.fused_attention import rope_attention, rope_attention_reference  # noqa: E402
from dinov3_deploy.reference.configs import ViTConfig  # noqa: E402
from dinov3_deploy.reference.factory import build_backbone, create_backbone  # noqa: E402
from dinov3_deploy.reference.models.layers.rope import RopePositionEmbedding  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype,hd,tol", [(torch.float32, 64, 1e-5), (torch.float16, 128, 2e-3)])
def test_rope_attention_matches_reference(dtype, hd, tol):
    B, H, (gh, gw) = 2, 2, (3, 4)
    N = 5 + gh * gw  # 17 tokens: one full 16-block and a partial one
    sin, cos = RopePositionEmbedding(hd).to(DEV)(gh, gw)
    qkv = torch.randn(B, N, 3 * H * hd, dtype=dtype, device=DEV)
    out = rope_attention(qkv, sin, cos, H)
    ref = rope_attention_reference(qkv.double(), sin.double(), cos.double(), H)
    assert out.shape == (B, N, H * hd) and out.dtype == dtype
    assert rel_err(out, ref) < tol
    # no RoPE at all (sin/cos None) is plain attention
    out2 = rope_attention(qkv, None, None, H)
    assert rel_err(out2, rope_attention_reference(qkv.double(), None, None, H)) < tol


def test_rope_attention_follows_new_sin_cos():
    """Nothing derived from sin/cos is kept between calls: new or changed tables take effect."""
    H, hd = 1, 32
    qkv = torch.randn(1, 5 + 4, 3 * H * hd, device=DEV)
    rope = RopePositionEmbedding(hd).to(DEV)
    a = rope_attention(qkv, *rope(2, 2), H)
    rope.periods.mul_(3.0)  # another model's periods (e.g. bf16-rounded ones), same shapes
    sin, cos = rope(2, 2)
    b = rope_attention(qkv, sin, cos, H)
    assert rel_err(b, rope_attention_reference(qkv, sin, cos, H)) < 1e-5 and not torch.allclose(a, b)
    sin.mul_(0.5)  # in-place change of a cached tensor
    c = rope_attention(qkv, sin, cos, H)
    assert rel_err(c, rope_attention_reference(qkv, sin, cos, H)) < 1e-5


def test_rope_attention_under_inference_mode():
    """`bench` and `infer` run under torch.inference_mode(): inference tensors have no version
    counter, so the op must not read one (nor keep tensors between calls)."""
    H, hd = 2, 32
    rope = RopePositionEmbedding(hd).to(DEV)
    with torch.inference_mode():
        qkv = torch.randn(2, 5 + 6, 3 * H * hd, device=DEV)
        sin, cos = rope(2, 3)
        out = rope_attention(qkv, sin, cos, H)
        again = rope_attention(qkv, sin, cos, H)  # the second call of a shape takes the cached plan
    ref = rope_attention_reference(qkv, sin, cos, H)
    assert rel_err(out, ref) < 1e-5 and torch.equal(out, again)


def test_rope_attention_plan_follows_shapes_and_non_contiguous_tables():
    """The per-shape plan is keyed on everything it bakes in: another token count, head count or a
    transposed-then-copied sin/cos must not reuse a plan made for something else."""
    hd = 32
    rope = RopePositionEmbedding(hd).to(DEV)
    for H, (gh, gw) in [(1, (2, 2)), (2, (2, 2)), (1, (3, 2))]:
        qkv = torch.randn(1, 5 + gh * gw, 3 * H * hd, device=DEV)
        sin, cos = rope(gh, gw)
        sin_nc = sin.t().contiguous().t()  # same values, column-major
        out = rope_attention(qkv, sin_nc, cos, H)
        assert rel_err(out, rope_attention_reference(qkv, sin, cos, H)) < 1e-5


def _pair(cfg_or_name, hd_check):
    sdpa = build_backbone(cfg_or_name).to(DEV).eval()
    tri = build_backbone(cfg_or_name).to(DEV).eval().set_attn_impl("triton")
    tri.load_state_dict(sdpa.state_dict())
    assert sdpa.blocks[0].attn.head_dim == hd_check
    return sdpa, tri


@pytest.mark.parametrize(
    "cfg,hd",
    [
        ("vit_tiny_test", 32),
        (ViTConfig("vit_hd64_test", 128, 2, 2), 64),  # the head dim of every released ViT but 7B
    ],
)
def test_model_triton_matches_sdpa(cfg, hd):
    sdpa, tri = _pair(cfg, hd)
    x = torch.randn(2, 3, 48, 32, device=DEV)  # 3x2 patches + 5 prefix = 11 tokens
    with torch.no_grad():
        a, b = sdpa.forward_features(x), tri.forward_features(x)
    for key in ("x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens", "x_prenorm"):
        assert rel_err(b[key], a[key]) < 1e-5, key


def test_create_backbone_triton_switch():
    m = create_backbone("vit_tiny_test", attn_impl="triton")
    assert all(blk.attn.impl == "triton" for blk in m.blocks)
    ref = create_backbone("vit_tiny_test", attn_impl="sdpa")
    ref.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(m.to(DEV)(x.to(DEV)), ref.to(DEV)(x.to(DEV))) < 1e-5


def test_model_with_triton_attention_exports_with_the_custom_op():
    """torch.export traces through the fake implementation and keeps the op as one node."""
    m = create_backbone("vit_tiny_test", attn_impl="triton")
    ep = torch.export.export(m, (torch.randn(1, 3, 32, 32),))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "dinov3_deploy.rope_attention.default" in targets


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["vits16", "vitb16"])
def test_model_triton_matches_sdpa_gpu_bf16(name):
    sdpa = create_backbone(name, device="cuda").to(torch.bfloat16)
    tri = create_backbone(name, device="cuda", attn_impl="triton").to(torch.bfloat16)
    tri.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 3, 512, 512, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        a, b = sdpa.forward_features(x), tri.forward_features(x)
    assert rel_err(b["x_norm_patchtokens"], a["x_norm_patchtokens"]) < 2e-2
    cos = torch.nn.functional.cosine_similarity(b["x_norm_patchtokens"].float(), a["x_norm_patchtokens"].float(), -1)
    assert cos.min() > 0.99


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,H,g", [(8, 12, 32), (1, 16, 64)])
def test_rope_attention_gpu_real_sizes(dtype, B, H, g):
    hd = 64
    sin, cos = RopePositionEmbedding(hd).cuda()(g, g)
    qkv = torch.randn(B, 5 + g * g, 3 * H * hd, dtype=dtype, device="cuda")
    ref = rope_attention_reference(qkv.float(), sin, cos, H)
    for use_tma in (False, True):
        out = rope_attention(qkv, sin, cos, H, use_tma)
        assert rel_err(out, ref) < (1e-2 if dtype == torch.bfloat16 else 3e-3)

"""qkv split + RoPE kernel vs the reference model's rope_apply (interpreter / GPU)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import

from dinov3_deploy.kernels.qkv_rope import qkv_rope, qkv_rope_into, rope_table  # noqa: E402
from dinov3_deploy.reference.models.layers.rope import RopePositionEmbedding, rope_apply  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def split_reference(qkv, sin, cos, H):
    """What SelfAttention does before SDPA: reshape/permute, then rope_apply on q and k."""
    B, N, three_d = qkv.shape
    q, k, v = qkv.reshape(B, N, 3, H, three_d // 3 // H).permute(2, 0, 3, 1, 4).unbind(0)
    return rope_apply(q, sin, cos), rope_apply(k, sin, cos), v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("hd", [64, 128])
def test_qkv_rope_matches_rope_apply(dtype, hd):
    B, H, (gh, gw), n_prefix = 2, 2, (3, 5), 5  # N = 20: not a multiple of the 16-token block
    sin, cos = RopePositionEmbedding(hd).to(DEV)(gh, gw)
    N = n_prefix + gh * gw
    qkv = torch.randn(B, N, 3 * H * hd, dtype=dtype, device=DEV)
    q, k, v = (torch.full((B, H, N, hd), float("nan"), dtype=dtype, device=DEV) for _ in range(3))
    cos_t, sin_t = rope_table(sin, cos, n_prefix)
    qkv_rope_into(qkv, cos_t, sin_t, H, q, k, v)
    rq, rk, rv = split_reference(qkv, sin, cos, H)
    tol = 1e-6 if dtype == torch.float32 else 1e-3  # fp32 rotation, one rounding to the output dtype
    torch.testing.assert_close(q, rq, atol=tol, rtol=tol)
    torch.testing.assert_close(k, rk, atol=tol, rtol=tol)
    assert torch.equal(v, rv)
    # prefix tokens (cls + 4 storage) pass through the identity rows bit for bit
    assert torch.equal(q[:, :, :n_prefix], rq[:, :, :n_prefix]) and torch.equal(k[:, :, :n_prefix], rk[:, :, :n_prefix])


def test_rope_table_identity_rows_and_folded_sign():
    hd = 64
    sin, cos = RopePositionEmbedding(hd)(2, 3)
    cos_t, sin_t = rope_table(sin, cos, 5)
    assert cos_t.shape == sin_t.shape == (11, hd) and cos_t.dtype == torch.float32
    assert torch.equal(cos_t[:5], torch.ones(5, hd)) and torch.equal(sin_t[:5], torch.zeros(5, hd))
    half = hd // 2
    assert torch.equal(sin_t[5:, :half], -sin[:, :half]) and torch.equal(sin_t[5:, half:], sin[:, half:])


def test_qkv_rope_without_rope_is_a_plain_split():
    B, N, H, hd = 1, 7, 2, 32
    qkv = torch.randn(B, N, 3 * H * hd, device=DEV)
    q, k, v = qkv_rope(qkv, None, None, H)
    ref = qkv.reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), ref))


def test_qkv_rope_custom_op_fake_shapes():
    qkv = torch.randn(2, 9, 3 * 2 * 32, device=DEV)
    sin, cos = RopePositionEmbedding(32).to(DEV)(2, 2)
    cos_t, sin_t = rope_table(sin, cos, 5)
    torch.library.opcheck(qkv_rope, (qkv, cos_t, sin_t, 2), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,H,gh,hd", [(8, 12, 32, 64), (1, 16, 64, 64), (2, 8, 32, 128)])
def test_qkv_rope_gpu_real_sizes(dtype, B, H, gh, hd):
    sin, cos = RopePositionEmbedding(hd).cuda()(gh, gh)
    N = 5 + gh * gh
    qkv = torch.randn(B, N, 3 * H * hd, dtype=dtype, device="cuda")
    q, k, v = (torch.full((B, H, N, hd), float("nan"), dtype=dtype, device="cuda") for _ in range(3))
    qkv_rope_into(qkv, *rope_table(sin, cos, 5), H, q, k, v)
    rq, rk, rv = split_reference(qkv, sin, cos, H)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(q, rq, atol=tol, rtol=tol)
    torch.testing.assert_close(k, rk, atol=tol, rtol=tol)
    assert torch.equal(v, rv)

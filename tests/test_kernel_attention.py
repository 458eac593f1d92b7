"""Attention kernel vs the plain-PyTorch reference: interpreter on the CPU, real sizes on a GPU."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import

from dinov3_deploy.kernels.attention import attention, attention_into, attention_reference  # noqa: E402

CPU = not torch.cuda.is_available()
DEV = "cpu" if CPU else "cuda"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def qkv(B, H, N, hd, dtype, device=DEV):
    return [torch.randn(B, H, N, hd, dtype=dtype, device=device) for _ in range(3)]


@pytest.mark.parametrize(
    "dtype,hd,N,tol",
    [
        (torch.float32, 64, 37, 1e-5),  # 37: not a multiple of the 16-wide interpreter blocks
        (torch.float16, 64, 21, 2e-3),
        (torch.float32, 128, 19, 1e-5),
        (torch.float16, 128, 16, 2e-3),  # exact multiple: no partial block at all
    ],
)
@pytest.mark.parametrize("use_tma", [False, True])
def test_attention_matches_reference(dtype, hd, N, tol, use_tma):
    q, k, v = qkv(2, 2, N, hd, dtype)
    out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
    attention_into(q, k, v, out, use_tma=use_tma)
    ref = attention_reference(q.double(), k.double(), v.double())
    assert not out.isnan().any()
    assert rel_err(out, ref) < tol


@pytest.mark.parametrize("use_tma", [False, True])
def test_attention_strided_views_and_custom_scale(use_tma):
    """The fused path reads V out of the packed qkv and writes [B, N, H, hd]: any strides work
    (TMA descriptors are then indexed in (b, n, h) order), and nothing outside the output view
    is touched."""
    B, N, H, hd = 1, 23, 3, 32
    packed = torch.randn(B, N, 3, H, hd, device=DEV)
    q, k, v = (packed[:, :, i].transpose(1, 2) for i in range(3))  # [B, H, N, hd] views
    canvas = torch.full((B, N, H + 1, hd), float("nan"), device=DEV)
    out = canvas[:, :, :H].transpose(1, 2)
    attention_into(q, k, v, out, scale=0.3, use_tma=use_tma)
    assert rel_err(out, attention_reference(q.double(), k.double(), v.double(), 0.3)) < 1e-5
    assert canvas[:, :, H].isnan().all()


def test_attention_is_a_traceable_custom_op():
    q, k, v = qkv(1, 2, 9, 32, torch.float32)
    torch.library.opcheck(attention, (q, k, v), test_utils=("test_schema", "test_faketensor"))
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in (q, k, v))
        out = torch.ops.dinov3_deploy.attention(fq, fk, fv)
    assert out.shape == q.shape and out.dtype == q.dtype


def test_attention_rejects_cpu_tensors_without_interpreter(monkeypatch):
    from dinov3_deploy.errors import DeployError

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = qkv(1, 1, 4, 16, torch.float32, device="cpu")
    with pytest.raises(DeployError, match="TRITON_INTERPRET"):
        attention_into(q, k, v, torch.empty_like(q))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,H,N,hd", [(8, 12, 1029, 64), (1, 6, 1029, 64), (1, 16, 4101, 64), (2, 4, 1029, 128)])
@pytest.mark.parametrize("use_tma", [False, True])
def test_attention_gpu_real_sizes(dtype, B, H, N, hd, use_tma):
    q, k, v = qkv(B, H, N, hd, dtype, device="cuda")
    out = torch.full_like(q, float("nan"))
    attention_into(q, k, v, out, use_tma=use_tma)
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert not out.isnan().any()
    assert rel_err(out, ref) < (1e-2 if dtype == torch.bfloat16 else 3e-3)


def test_block_m_choice_keeps_sms_busy_at_batch_1(monkeypatch):
    """On a 132-SM Hopper: B=1 vits16 (6 heads) would fill only 54 SMs with 128-row blocks, so it
    takes 64-row blocks (102 programs); B=8 keeps the more efficient 128-row blocks."""
    import dinov3_deploy.kernels.attention as A

    monkeypatch.setattr(A, "interpreting", lambda: False)
    monkeypatch.setattr(A, "_sm_count", lambda device: 132)
    cuda = torch.device("cuda")
    assert A.attention_config(1, 6, 1029, 64, cuda)["BLOCK_M"] == 64
    assert A.attention_config(1, 16, 1029, 64, cuda)["BLOCK_M"] == 64  # 144 programs: 2 waves at 128
    assert A.attention_config(8, 12, 1029, 64, cuda)["BLOCK_M"] == 128
    assert A.attention_config(1, 16, 4101, 64, cuda)["BLOCK_M"] == 128

"""Attention kernel vs the plain-PyTorch reference: interpreter on the CPU, real sizes on a GPU."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import

from parity_helpers import rel_err  # noqa: E402

import dinov3_deploy.kernels.attention as A  # noqa: E402
from dinov3_deploy.kernels.attention import attention, attention_into, attention_reference  # noqa: E402

CPU = not torch.cuda.is_available()
DEV = "cpu" if CPU else "cuda"


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
    """On a 132-SM Hopper, head dim 64: 64-row blocks at 4 warps everywhere (the H200 sweep's best
    at B=8; at B=1, 12 heads, 128-row blocks leave 24 SMs idle). Head dim 128 keeps the wave rule:
    B=1 with 6 heads takes 64-row blocks, B=8 the more efficient 128-row ones."""
    monkeypatch.setattr(A, "interpreting", lambda: False)
    monkeypatch.setattr(A, "_sm_count", lambda device: 132)
    cuda = torch.device("cuda")
    for B, H, N in [(1, 6, 1029), (1, 12, 1029), (8, 12, 1029), (1, 16, 4101)]:
        assert A.attention_config(B, H, N, 64, cuda) == dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
    assert A.attention_config(1, 6, 1029, 128, cuda)["BLOCK_M"] == 64
    assert A.attention_config(8, 12, 1029, 128, cuda)["BLOCK_M"] == 128


@pytest.fixture
def fresh_fallback_warnings():
    A._warn_fallback.cache_clear()  # the warning is logged once per reason and process
    yield
    A._warn_fallback.cache_clear()


def test_tma_fallback_is_reported(monkeypatch, caplog, fresh_fallback_warnings):
    monkeypatch.setattr(A, "interpreting", lambda: False)
    assert A.resolve_load_path(False, "cpu") == ("pointer", "use_tma=False")
    with caplog.at_level("WARNING", logger="dinov3_deploy.kernels"):
        path, reason = A.resolve_load_path(True, "cpu")
    assert path == "pointer" and "CUDA device" in reason
    assert any("falls back to pointer loads" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    # a pre-Hopper GPU
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    path, reason = A.resolve_load_path(True, "cuda")
    assert path == "pointer" and "8.6" in reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert A.resolve_load_path(True, "cuda")[0] == "tma"


def test_misaligned_view_falls_back_and_still_computes(caplog, fresh_fallback_warnings):
    """A q view one fp32 element into its storage cannot be a TMA descriptor: the launch takes
    pointer loads, says so, and the result is still right."""
    storage = torch.randn(1 * 2 * 19 * 32 + 1, device=DEV)
    q = storage[1:].view(1, 2, 19, 32)
    k, v = torch.randn(2, 1, 2, 19, 32, device=DEV)
    assert A.resolve_load_path(True, q.device, (k, v))[0] == "tma"
    with caplog.at_level("WARNING", logger="dinov3_deploy.kernels"):
        assert A.resolve_load_path(True, q.device, (q, k, v))[0] == "pointer"
        out = attention_into(q, k, v, torch.empty_like(k), use_tma=True)
    assert any("16-byte" in r.getMessage() for r in caplog.records)
    assert rel_err(out, attention_reference(q.double(), k.double(), v.double())) < 1e-5


def test_fp32_dots_ask_for_ieee_not_tf32(monkeypatch):
    """On a GPU an fp32 tl.dot defaults to TF32 (~1e-3 error); the launcher selects "ieee" for fp32
    inputs. The interpreter computes in full precision either way, so check what is launched."""
    assert A.dot_input_precision(torch.float32) == "ieee"
    assert A.dot_input_precision(torch.float16) == A.dot_input_precision(torch.bfloat16) == "tf32"
    # what the reports record is the same one definition: fp32 "ieee", else the inputs' type
    assert A.dot_precision(torch.float32) == "ieee" and A.dot_precision(torch.bfloat16) == "bfloat16"
    launched = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append(kwargs)

    monkeypatch.setattr(A, "_attn_fwd_kernel", Recorder())
    for dtype in (torch.float32, torch.float16):
        q, k, v = qkv(1, 1, 16, 16, dtype)
        attention_into(q, k, v, torch.empty_like(q))
    assert [kw["DOT_PRECISION"] for kw in launched] == ["ieee", "tf32"]


def test_launch_device_is_the_tensors(monkeypatch):
    """Triton launches on the current CUDA device: the launch is wrapped in the tensor's device."""
    entered = []
    monkeypatch.setattr(torch.cuda, "device", lambda d: entered.append(d) or A.contextlib.nullcontext())

    class OnCuda1:
        device = torch.device("cuda", 1)

    with A.on_device(OnCuda1()):
        pass
    assert entered == [torch.device("cuda", 1)]
    with A.on_device(torch.empty(1)):  # CPU (interpreter): no CUDA device is touched
        pass
    assert entered == [torch.device("cuda", 1)]


@pytest.mark.gpu
def test_attention_gpu_fp32_is_not_tf32():
    """TF32 dots would give ~1e-3 relative error at this size; ieee stays near 1e-6."""
    q, k, v = qkv(2, 4, 1029, 64, torch.float32, device="cuda")
    out = torch.empty_like(q)
    attention_into(q, k, v, out)
    assert rel_err(out, attention_reference(q.double(), k.double(), v.double())) < 1e-5

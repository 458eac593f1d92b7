"""Ahead-of-time PTX for Hopper without a GPU (triton.compile + GPUTarget), and the TensorRT
plugin registration's dependency error. The compile runs in a subprocess: the test session runs
the kernels in the interpreter (TRITON_INTERPRET=1), which replaces them with Python functions."""

import json
import os
import subprocess
import sys

import pytest

from dinov3_deploy.errors import MissingDependencyError

SCRIPT = r"""
import json
from dinov3_deploy.engines.plugins import compile_attention_ptx, compile_stitch_ptx
out = {}
for dt, hd in [("float16", 64), ("bfloat16", 128)]:
    k = compile_attention_ptx(dt, hd, arch=90)
    out[f"attn_{dt}_{hd}"] = dict(name=k.name, shared=k.shared, block_x=k.block_x, ptx=k.ptx)
k = compile_stitch_ptx("float32", "int32", resize=True, arch=90)
out["stitch"] = dict(name=k.name, shared=k.shared, block_x=k.block_x, ptx=k.ptx)

# the TMA variant (JIT path on Hopper), both descriptor index orders
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dinov3_deploy.kernels.attention import _attn_fwd_kernel as kern
for bnh in (False, True):
    blk = (lambda r: [1, r, 1, 64]) if bnh else (lambda r: [1, 1, r, 64])
    desc = lambda b: "tensordesc<bf16[%s]>" % ", ".join(map(str, b))
    sig = {n: "constexpr" for n in kern.arg_names}
    sig.update(Q=desc(blk(128)), K=desc(blk(64)), V=desc(blk(64)), Out=desc(blk(128)), H="i32", N="i32")
    cons = {n: 0 for n in kern.arg_names if n.startswith("s")}
    cons.update(QK_SCALE=0.18, HEAD_DIM=64, BLOCK_M=128, BLOCK_N=64, USE_TMA=True,
                Q_BNH=bnh, K_BNH=bnh, V_BNH=bnh, O_BNH=bnh, DOT_PRECISION="tf32")
    c = triton.compile(ASTSource(fn=kern, signature=sig, constexprs=cons), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=8, num_stages=3))
    out[f"tma_bnh_{bnh}"] = dict(ptx=c.asm["ptx"], descs=len(c.metadata.tensordesc_meta),
                                 scratch=c.metadata.global_scratch_size)

# the JIT paths the GPU tests take: qkv split + RoPE, stitch with probabilities and a final resize
from dinov3_deploy.engines.plugins import STITCH_INTS, _compile
from dinov3_deploy.kernels.qkv_rope import _qkv_rope_kernel
from dinov3_deploy.kernels.stitch import _stitch_kernel
ints = ["s_b", "s_n", "so_b", "so_h", "so_n", "H", "N", "D", "N_PREFIX"]
sig = {"QKV": "*bf16", "COS": "*fp32", "SIN": "*fp32", "Q": "*bf16", "K": "*bf16", "V": "*bf16",
       **dict.fromkeys(ints, "i32")}
k = _compile(_qkv_rope_kernel, sig, dict(HEAD_DIM=64, BLOCK_T=64, HAS_ROPE=True, WRITE_V=False, RAW_SIN=True), [],
             90, num_warps=8)
out["qkv_rope"] = dict(ptx=k.ptx)
sig = {"LOGITS": "*fp16", "LABELS": "*i64", "PROBS": "*fp32", **dict.fromkeys(STITCH_INTS, "i32")}
k = _compile(_stitch_kernel, sig, dict(RESIZE=True, WRITE_PROBS=True, BLOCK_P=128, BLOCK_C=8), [], 90, num_warps=4)
out["stitch_probs"] = dict(ptx=k.ptx)

# an Ampere target and a driver that supports CUDA 12.4 only: PTX ISA capped at 8.4
import dinov3_deploy.engines.plugins as P
P.driver_cuda_version = lambda: "12.4"
k = P.compile_attention_ptx("float16", 64, arch=80)
out["attn_sm80_driver124"] = dict(ptx=k.ptx, target=k.target)

# the deformable-attention plugin's kernel (level sizes from a tensor) for Hopper and Ampere, and
# the torch op's JIT variant (level sizes as ints)
from dinov3_deploy.engines.plugins import MS_DEFORM_ATTN_INTS, compile_ms_deform_attn_ptx
from dinov3_deploy.kernels.ms_deform_attn import _ms_deform_attn_kernel
for dt, hd, arch in [("bfloat16", 128, 90), ("float16", 64, 90), ("float32", 32, 80)]:
    k = compile_ms_deform_attn_ptx(dt, hd, 3, 4, arch=arch)
    out[f"msda_{dt}_{hd}_{arch}"] = dict(name=k.name, shared=k.shared, block_x=k.block_x, ptx=k.ptx, target=k.target)
sig = {"VALUE": "*bf16", "LOC": "*bf16", "WEIGHT": "*bf16", "OUT": "*bf16", **dict.fromkeys(MS_DEFORM_ATTN_INTS, "i32")}
k = _compile(_ms_deform_attn_kernel, sig, dict(SHAPES=None, DH=128, N_LEVELS=3, N_POINTS=4, BLOCK_Q=32, BLOCK_D=128,
             SHAPES_FROM_TENSOR=False), ["VALUE", "LOC", "WEIGHT", "OUT"], 90, num_warps=4)
out["msda_jit"] = dict(name=k.name, ptx=k.ptx)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def aot():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # prove no device is involved
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    if r.returncode and "ptxas" in r.stderr and "not found" in r.stderr:
        pytest.skip(f"triton cannot compile without its bundled ptxas here: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _entry_params(ptx: str, name: str) -> int:
    start = ptx.index(f".entry {name}(")
    return ptx[start : ptx.index(")", start)].count(".param")


def test_attention_ptx_for_sm90_without_gpu(aot):
    for key in ("attn_float16_64", "attn_bfloat16_128"):
        k = aot[key]
        assert ".target sm_90" in k["ptx"]  # sm_90a: Hopper's wgmma allowed
        assert "wgmma" in k["ptx"]  # the tensor-core path of Hopper, not the Ampere mma fallback
        assert "cp.async.bulk.tensor" not in k["ptx"]  # engine variant: no TMA
        assert k["shared"] <= 48 * 1024  # launchable without a shared-memory opt-in
        assert k["block_x"] == 256
        # q, k, v, 14 int32 scalars, out (+ Triton's two unused scratch pointers)
        assert _entry_params(k["ptx"], k["name"]) == 3 + 14 + 1 + 2


def test_tma_variant_compiles_for_sm90(aot):
    for key in ("tma_bnh_False", "tma_bnh_True"):
        k = aot[key]
        assert "cp.async.bulk.tensor" in k["ptx"] and "wgmma" in k["ptx"]
        assert k["descs"] == 4 and k["scratch"] == 0  # host-side descriptors: no global scratch


def test_stitch_ptx_for_sm90_without_gpu(aot):
    k = aot["stitch"]
    assert ".target sm_90" in k["ptx"] and "cp.async.bulk.tensor" not in k["ptx"]
    # logits, 15 int32 scalars (sizes + window_geometry's fields), labels (probs compiled out)
    # + Triton's two scratch pointers
    assert _entry_params(k["ptx"], k["name"]) == 1 + 15 + 1 + 2


def test_ms_deform_attn_ptx_for_the_plugin_targets_without_gpu(aot):
    for key in ("msda_bfloat16_128_90", "msda_float16_64_90", "msda_float32_32_80"):
        k = aot[key]
        assert f".target {k['target']}" in k["ptx"]
        assert k["shared"] <= 48 * 1024 and k["block_x"] == 128
        assert ".local" not in k["ptx"]  # the fp32 accumulator stays in registers
        # value, level shapes, locations, weights, 10 int32 scalars, out (+ Triton's two scratch pointers)
        assert _entry_params(k["ptx"], k["name"]) == 4 + 10 + 1 + 2
    assert ".target sm_80" in aot["msda_float32_32_80"]["ptx"]


def test_jit_paths_compile_for_sm90(aot):
    assert ".target sm_90" in aot["msda_jit"]["ptx"]
    assert _entry_params(aot["msda_jit"]["ptx"], aot["msda_jit"]["name"]) == 3 + 10 + 1 + 2  # no shapes tensor
    assert ".target sm_90" in aot["qkv_rope"]["ptx"]
    assert ".target sm_90" in aot["stitch_probs"]["ptx"] and "ex2.approx" in aot["stitch_probs"]["ptx"]  # softmax


def test_ptx_follows_the_target_and_the_driver(aot):
    """Not Hopper-only sm_90a for every GPU: the requested capability, and a PTX ISA version the
    driver can JIT."""
    k = aot["attn_sm80_driver124"]
    assert ".target sm_80" in k["ptx"] and "sm_90" not in k["ptx"] and k["target"] == "sm_80"
    assert ".version 8.4" in k["ptx"]
    assert "wgmma" not in k["ptx"] and "mma.sync" in k["ptx"]  # Ampere tensor cores


def test_ptx_version_cap():
    from dinov3_deploy.engines.plugins import ptx_version

    bundled = ptx_version(90, None)
    assert bundled >= 84
    assert ptx_version(90, "12.4") == 84  # CUDA 12.4 drivers JIT PTX ISA 8.4 at most
    assert ptx_version(90, "99.0") == bundled  # a newer driver: the bundled ptxas's version


def test_default_arch_is_the_current_device(monkeypatch):
    import torch

    from dinov3_deploy.engines import plugins as P
    from dinov3_deploy.errors import DeployError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    assert P.device_arch() == 89
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeployError, match="arch="):
        P.device_arch()


class _FakeTrtp:
    """The parts of tensorrt.plugin the registration touches, recording the registered functions.
    tensorrt.plugin cannot be installed here; what it checks (by its source) is reproduced in the test."""

    class TensorDesc: ...

    class KernelLaunchParams: ...

    class SymExprs: ...

    class SymIntExprs(SymExprs): ...

    def __init__(self):
        self.fns = {}

    def _decorator(self, kind):
        def deco(name):
            def record(fn):
                self.fns[(kind, name)] = fn
                return fn

            return record

        return deco

    def __getattr__(self, kind):  # register / autotune / aot_impl
        return self._decorator(kind)


def test_plugin_functions_carry_real_annotations():
    """tensorrt.plugin checks `issubclass(annotation, TensorDesc)` on the register function's
    parameters and requires aot_impl to return-annotate tuple[str | bytes, str | bytes,
    KernelLaunchParams, SymExprs subclass]: string annotations (from __future__) would fail both."""
    import inspect
    import types
    import typing

    from dinov3_deploy.engines import plugins as P

    trt = types.SimpleNamespace(float16=1, bfloat16=2, int32=3, float32=4)
    trtp = _FakeTrtp()
    P._register_attention(trt, trtp, 90)
    P._register_stitch(trt, trtp, 90)
    P._register_ms_deform_attn(trt, trtp, 90)
    for plugin, n_tensors in ((P.ATTENTION_PLUGIN, 3), (P.STITCH_PLUGIN, 1), (P.MS_DEFORM_ATTN_PLUGIN, 4)):
        desc = inspect.signature(trtp.fns[("register", plugin)])
        params = list(desc.parameters.values())
        assert all(issubclass(p.annotation, trtp.TensorDesc) for p in params[:n_tensors])
        assert all(p.annotation is int for p in params[n_tensors:])
        assert issubclass(desc.return_annotation, trtp.TensorDesc)
        aot = inspect.signature(trtp.fns[("aot_impl", plugin)])
        names = list(aot.parameters)
        assert names[: len(params)] == [p.name for p in params] and names[-2:] == ["outputs", "tactic"]
        assert typing.get_origin(aot.parameters["outputs"].annotation) is tuple
        ret = aot.return_annotation
        assert typing.get_origin(ret) is tuple and len(typing.get_args(ret)) == 4
        name_t, ptx_t, launch_t, extra_t = typing.get_args(ret)
        assert set(typing.get_args(name_t)) == set(typing.get_args(ptx_t)) == {str, bytes}
        assert issubclass(launch_t, trtp.KernelLaunchParams) and issubclass(extra_t, trtp.SymExprs)


def test_const_calls_constant_value():
    from dinov3_deploy.engines.plugins import _const

    class Expr:
        def __init__(self, value):
            self.value = value

        @property
        def is_constant(self):
            return self.value is not None

        def constant_value(self):
            return self.value

    assert _const(Expr(64), "head dim") == 64
    with pytest.raises(ValueError, match="static"):
        _const(Expr(None), "head dim")


def test_register_plugins_names_the_trt_extra():
    pytest.importorskip("triton")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        from dinov3_deploy.engines.plugins import register_plugins

        with pytest.raises(MissingDependencyError, match=r"dinov3-deploy\[trt\]"):
            register_plugins()
    else:  # pragma: no cover - full TensorRT present (GPU machines)
        from dinov3_deploy.engines.plugins import register_plugins

        assert register_plugins() == ["dinov3_deploy::attention", "dinov3_deploy::stitch",
                                      "dinov3_deploy::ms_deform_attn"]


def test_ms_deform_attn_plugin_launch_from_the_shapes(monkeypatch):
    """The deformable-attention plugin's output shape [B, Q, M*Dh], its kernel choice (dtype, head
    dim, levels, points read from the inputs) and its launch: query blocks on x, (batch, head) on y,
    Q and M as the scalar arguments, the level sizes left to the [L, 2] input."""
    import types

    from dinov3_deploy.engines import plugins as P

    class Dim(int):
        is_constant = True

        def constant_value(self):
            return int(self)

    class Desc:
        def __init__(self, shape, dtype="f16"):
            self.shape_expr, self.dtype = [Dim(d) for d in shape], dtype

        def like(self):
            return Desc(self.shape_expr, self.dtype)

    trtp = _FakeTrtp()
    trtp.ShapeExprs = lambda n: [None] * n
    trtp.KernelLaunchParams = types.SimpleNamespace
    trtp.SymInt32 = int
    trtp.SymIntExprs = types.SimpleNamespace(from_tuple=tuple)
    trtp.cdiv = lambda a, b: -(-a // b)
    compiled = {}

    def fake_compile(dtype, hd, n_levels, n_points, arch=None, config=None):
        compiled.update(dtype=dtype, hd=hd, levels=n_levels, points=n_points, arch=arch)
        return P.AotKernel("msda", "ptx", config["num_warps"], 0, f"sm_{arch}")

    monkeypatch.setattr(P, "compile_ms_deform_attn_ptx", fake_compile)
    P._register_ms_deform_attn(types.SimpleNamespace(float32="f32", float16="f16", bfloat16="bf16"), trtp, 90)
    value, shapes = Desc([2, 16464, 16, 128]), Desc([3, 2], "i32")
    loc, weights = Desc([2, 16464, 16, 3, 4, 2]), Desc([2, 16464, 16, 3, 4])
    out = trtp.fns[("register", P.MS_DEFORM_ATTN_PLUGIN)](value, shapes, loc, weights)
    assert list(out.shape_expr) == [2, 16464, 2048] and out.dtype == "f16"
    name, ptx, launch, extra = trtp.fns[("aot_impl", P.MS_DEFORM_ATTN_PLUGIN)](value, shapes, loc, weights, (out,), 0)
    assert compiled == dict(dtype="float16", hd=128, levels=3, points=4, arch=90)
    block_q = P.ms_deform_attn_engine_config(128)["BLOCK_Q"]
    assert (launch.grid_x, launch.grid_y, launch.block_x) == (-(-16464 // block_q), 2 * 16, 128)
    assert extra == (16464, 16, 0, 0, 0, 0, 0, 0, 0, 0)

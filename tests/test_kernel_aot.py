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
                Q_BNH=bnh, K_BNH=bnh, V_BNH=bnh, O_BNH=bnh)
    c = triton.compile(ASTSource(fn=kern, signature=sig, constexprs=cons), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=8, num_stages=3))
    out[f"tma_bnh_{bnh}"] = dict(ptx=c.asm["ptx"], descs=len(c.metadata.tensordesc_meta),
                                 scratch=c.metadata.global_scratch_size)

# the JIT paths the GPU tests take: qkv split + RoPE, stitch with probabilities and a final resize
from dinov3_deploy.engines.plugins import _compile
from dinov3_deploy.kernels.qkv_rope import _qkv_rope_kernel
from dinov3_deploy.kernels.stitch import _stitch_kernel
ints = ["s_b", "s_n", "so_b", "so_h", "so_n", "H", "N", "D"]
sig = {"QKV": "*bf16", "COS": "*fp32", "SIN": "*fp32", "Q": "*bf16", "K": "*bf16", "V": "*bf16",
       **dict.fromkeys(ints, "i32")}
k = _compile(_qkv_rope_kernel, sig, dict(HEAD_DIM=64, BLOCK_T=64, HAS_ROPE=True, WRITE_V=True), [], 90, num_warps=8)
out["qkv_rope"] = dict(ptx=k.ptx)
ints = ["H", "W", "C", "LH", "LW", "crop_h", "crop_w", "stride_h", "stride_w", "OH", "OW"]
sig = {"LOGITS": "*fp16", "LABELS": "*i64", "PROBS": "*fp32", **dict.fromkeys(ints, "i32")}
k = _compile(_stitch_kernel, sig, dict(RESIZE=True, WRITE_PROBS=True, BLOCK_P=128, BLOCK_C=8), [], 90, num_warps=4)
out["stitch_probs"] = dict(ptx=k.ptx)
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
    # logits, 11 int32 scalars, labels (probs compiled out) + Triton's two scratch pointers
    assert _entry_params(k["ptx"], k["name"]) == 1 + 11 + 1 + 2


def test_jit_paths_compile_for_sm90(aot):
    assert ".target sm_90" in aot["qkv_rope"]["ptx"]
    assert ".target sm_90" in aot["stitch_probs"]["ptx"] and "ex2.approx" in aot["stitch_probs"]["ptx"]  # softmax


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

        assert register_plugins() == ["dinov3_deploy::attention", "dinov3_deploy::stitch"]

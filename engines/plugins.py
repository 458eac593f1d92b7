"""The Triton attention, stitch and deformable-attention kernels as TensorRT Quickly Deployable
Plugins (ahead-of-time PTX).

Three parts:

* `compile_attention_ptx` / `compile_stitch_ptx` / `compile_ms_deform_attn_ptx`: compile the
  kernels of `dinov3_deploy.kernels` to PTX for a GPU target with `triton.compile` and a
  `GPUTarget` -- no GPU, no driver and no TensorRT needed (only triton's bundled LLVM/ptxas).
  They compile the engine variants: pointer loads, no TMA descriptors, no scratch memory
  (checked), so the PTX launches with plain pointer/int arguments.
* `register_plugins()`: registers `dinov3_deploy::attention`, `dinov3_deploy::stitch` and
  `dinov3_deploy::ms_deform_attn` with
  `tensorrt.plugin` (`@trtp.register` shape/type description + `@trtp.aot_impl` returning the PTX,
  launch grid and the integer scalar arguments as symbolic shape expressions). Needs the full
  `tensorrt` package (the `trt` extra): `tensorrt_rtx` ships no `tensorrt.plugin` module.
* `onnx_translation_table()`: for `torch.onnx.export(dynamo=True)` of an attn_impl="triton" model:
  split + RoPE as standard ONNX ops around one `dinov3_deploy.attention` node per block (with
  `plugin_namespace`/`plugin_version`/`aot` attributes), which TensorRT's ONNX parser resolves to the
  registered plugin's ahead-of-time implementation. `ms_deform_attn_translation_table()`: the same for
  a Mask2Former with set_deform_impl("triton"): one `dinov3_deploy.ms_deform_attn` node per
  deformable-attention core (`--deform-attn plugin`).

Calling convention. TensorRT launches an AOT plugin kernel as (inputs..., extra int32 scalars...,
outputs...); the kernels' parameters are declared in that order and every float (softmax scale,
resize scales) is a compile-time constant or computed in the kernel. Triton appends two pointer
parameters (global / profile scratch) to every kernel; both sizes are 0 for these kernels, so the
kernels never read them (asserted at compile time).

What could not be run here (no GPU, no `tensorrt`): the registration itself, parsing the ONNX
plugin node into a network, an engine build with these plugins, and executing the PTX. Tested
here: the PTX compilation (tests/test_kernel_aot.py) and the ONNX export, with the translation
checked numerically in ONNX Runtime (tests/test_kernel_onnx.py). Two assumptions about the
`tensorrt.plugin` API to confirm on the first GPU machine with full TensorRT:
  1. the type-string syntax given to `AutoTuneCombination`;
  2. that TensorRT launches the kernels without the two trailing scratch pointers Triton adds
     (unused, size 0, asserted) - if it passes them, the parameter lists need two dummies.
The stitch plugin writes int32 labels (the PyTorch op writes int64). The deformable-attention plugin
takes its level sizes as an int32 [L, 2] (h, w) input tensor, read by the kernel, so one engine
serves every H/W of its profile; the torch op passes them as ints.

Target. The PTX is compiled for the compute capability of the GPU that builds the engine (or the
`arch` given to `register_plugins`): Triton compiles capability 9.0 to sm_90a, which loads on
Hopper only, so a fixed target would break every other GPU. Its PTX ISA version is capped at what
the installed driver can JIT: Triton otherwise writes the version of its bundled ptxas, which an
older driver rejects.
"""

# No `from __future__ import annotations`: tensorrt.plugin validates the registered functions'
# annotations as real classes (issubclass(annotation, TensorDesc), the aot_impl return tuple).
import ctypes
import math
from dataclasses import dataclass

from dinov3_deploy.errors import DeployError, require

ATTENTION_PLUGIN = "dinov3_deploy::attention"
STITCH_PLUGIN = "dinov3_deploy::stitch"
MS_DEFORM_ATTN_PLUGIN = "dinov3_deploy::ms_deform_attn"
_TRITON_TYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "int32": "i32", "int64": "i64"}


@dataclass(frozen=True)
class AotKernel:
    """One kernel compiled ahead of time: what an AOT plugin hands TensorRT."""

    name: str
    ptx: str
    num_warps: int
    shared: int  # bytes of dynamic shared memory the launch needs
    target: str

    @property
    def block_x(self) -> int:
        return self.num_warps * 32


def device_arch() -> int:
    """Compute capability of the current CUDA device as Triton's arch number (9.0 -> 90)."""
    import torch

    if not torch.cuda.is_available():
        raise DeployError("no CUDA device to take the plugin kernels' target from; pass arch= (e.g. 90 for Hopper)")
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


def driver_cuda_version() -> str | None:
    """The CUDA version the installed driver supports ("12.4"), or None without a driver."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    v = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(v)) != 0 or v.value <= 0:
        return None
    return f"{v.value // 1000}.{v.value % 1000 // 10}"


def ptx_version(arch: int, driver_cuda: str | None) -> int:
    """PTX ISA version (84 = 8.4) to write: the bundled ptxas's, capped at the driver's."""
    from triton.backends.nvidia.compiler import get_ptxas, ptx_get_version

    version = ptx_get_version(get_ptxas(arch).version)
    return version if driver_cuda is None else min(version, ptx_get_version(driver_cuda))


def _compile(fn, signature: dict, constexprs: dict, divisible16: list[str], arch: int, **options) -> AotKernel:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(fn.arg_names)
    sig = dict(signature)
    for name in constexprs:
        sig[name] = "constexpr"
    missing = [n for n in names if n not in sig]
    if missing:
        raise ValueError(f"no type for kernel arguments {missing}")
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in divisible16}
    src = ASTSource(fn=fn, signature={n: sig[n] for n in names}, constexprs=constexprs, attrs=attrs)
    options.setdefault("ptx_version", ptx_version(arch, driver_cuda_version()))
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    md = compiled.metadata
    if md.global_scratch_size or md.profile_scratch_size or md.tensordesc_meta:
        raise RuntimeError(f"{md.name}: the engine variant must use no scratch memory and no TMA descriptors")
    return AotKernel(md.name, compiled.asm["ptx"], md.num_warps, md.shared, f"sm_{arch}")


def _interpreted(kernel) -> bool:
    return type(kernel).__name__ == "InterpretedFunction"


def attention_engine_config(head_dim: int) -> dict:
    """One configuration for every shape (a plugin has no autotuning here): BLOCK_M 128 x
    BLOCK_N 64, 8 warps; 2 pipeline stages (1 for head dim 128) keep shared memory within the 48 KB a launch gets
    without an opt-in."""
    return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2 if head_dim <= 64 else 1)


def compile_attention_ptx(dtype: str = "float16", head_dim: int = 64, arch: int | None = None,
                          config: dict | None = None) -> AotKernel:
    """PTX of the attention kernel for contiguous [B, H, N, head_dim] q/k/v/out of `dtype`, for
    `arch` (default: the current device's)."""
    import torch

    from dinov3_deploy.kernels.attention import LOG2E, dot_input_precision
    from dinov3_deploy.kernels.attention import _attn_fwd_kernel as kernel

    if _interpreted(kernel):
        raise RuntimeError("TRITON_INTERPRET=1 is set: the kernels were defined for the interpreter; "
                           "compile PTX in a process without it")
    t = "*" + _TRITON_TYPES[dtype]
    cfg = dict(config or attention_engine_config(head_dim))
    ints = ["sq_b", "sq_h", "sq_n", "sk_b", "sk_h", "sk_n", "sv_b", "sv_h", "sv_n", "so_b", "so_h", "so_n", "H", "N"]
    sig = {"Q": t, "K": t, "V": t, "Out": t, **{n: "i32" for n in ints}}
    constexprs = dict(QK_SCALE=head_dim**-0.5 * LOG2E, HEAD_DIM=head_dim, BLOCK_M=cfg["BLOCK_M"],
                      BLOCK_N=cfg["BLOCK_N"], USE_TMA=False, Q_BNH=False, K_BNH=False, V_BNH=False, O_BNH=False,
                      DOT_PRECISION=dot_input_precision(getattr(torch, dtype)))
    strides = [n for n in ints if n.startswith("s")]
    return _compile(kernel, sig, constexprs, ["Q", "K", "V", "Out", *strides], device_arch() if arch is None else arch,
                    num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


# the stitch kernel's integer parameters, in order: image size, classes, logits size, then the
# fields of window_geometry, then the output size
STITCH_INTS = ["H", "W", "C", "LH", "LW", "crop_h", "crop_w", "stride_h", "stride_w", "n_rows", "n_cols", "win_h",
               "win_w", "OH", "OW"]


def stitch_engine_config() -> dict:
    return dict(BLOCK_P=128, BLOCK_C=8, num_warps=4, num_stages=1)


def compile_stitch_ptx(logits_dtype: str = "float32", labels_dtype: str = "int32", resize: bool = False,
                       arch: int | None = None, config: dict | None = None) -> AotKernel:
    """PTX of the stitch kernel (labels only) for [n_windows, C, h', w'] logits, for `arch`
    (default: the current device's)."""
    from dinov3_deploy.kernels.stitch import _stitch_kernel

    if _interpreted(_stitch_kernel):
        raise RuntimeError("TRITON_INTERPRET=1 is set: compile PTX in a process without it")
    cfg = dict(config or stitch_engine_config())
    sig = {"LOGITS": "*" + _TRITON_TYPES[logits_dtype], "LABELS": "*" + _TRITON_TYPES[labels_dtype],
           **{n: "i32" for n in STITCH_INTS}}
    constexprs = dict(PROBS=None, RESIZE=resize, WRITE_PROBS=False, BLOCK_P=cfg["BLOCK_P"], BLOCK_C=cfg["BLOCK_C"])
    return _compile(_stitch_kernel, sig, constexprs, ["LOGITS", "LABELS"], device_arch() if arch is None else arch,
                    num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


# the deformable-attention kernel's integer parameters, in order (H0..W3 unused by the plugin's
# variant, which reads the level sizes from its [L, 2] input)
MS_DEFORM_ATTN_INTS = ["Q", "M", "H0", "W0", "H1", "W1", "H2", "W2", "H3", "W3"]


def ms_deform_attn_engine_config(head_dim: int) -> dict:
    """As the torch launcher's GPU choice (kernels/ms_deform_attn.py): BLOCK_Q x head_dim fp32
    accumulator in registers, no shared memory pipeline."""
    return dict(BLOCK_Q=64 if head_dim <= 64 else 32, num_warps=4, num_stages=1)


def compile_ms_deform_attn_ptx(dtype: str = "float16", head_dim: int = 128, n_levels: int = 3, n_points: int = 4,
                               arch: int | None = None, config: dict | None = None) -> AotKernel:
    """PTX of the deformable-attention kernel, level sizes read from an int32 [L, 2] tensor, for
    contiguous value [B, S, M, head_dim], locations [B, Q, M, L, P, 2], weights [B, Q, M, L, P]
    and out [B, Q, M*head_dim], all of `dtype`, for `arch` (default: the current device's)."""
    import triton

    from dinov3_deploy.kernels.ms_deform_attn import _ms_deform_attn_kernel as kernel

    if _interpreted(kernel):
        raise RuntimeError("TRITON_INTERPRET=1 is set: compile PTX in a process without it")
    t = "*" + _TRITON_TYPES[dtype]
    cfg = dict(config or ms_deform_attn_engine_config(head_dim))
    sig = {"VALUE": t, "SHAPES": "*i32", "LOC": t, "WEIGHT": t, "OUT": t, **dict.fromkeys(MS_DEFORM_ATTN_INTS, "i32")}
    constexprs = dict(DH=head_dim, N_LEVELS=n_levels, N_POINTS=n_points, BLOCK_Q=cfg["BLOCK_Q"],
                      BLOCK_D=triton.next_power_of_2(head_dim), SHAPES_FROM_TENSOR=True)
    return _compile(kernel, sig, constexprs, ["VALUE", "SHAPES", "LOC", "WEIGHT", "OUT"],
                    device_arch() if arch is None else arch, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


# ----------------------------------------------------------------------------------------------
# TensorRT Quickly Deployable Plugins (full `tensorrt` only)
# ----------------------------------------------------------------------------------------------
_registered: list[str] = []


def register_plugins(arch: int | None = None) -> list[str]:
    """Register the plugins with `tensorrt.plugin` (idempotent); returns their ids. Their PTX is
    compiled when TensorRT builds an engine, for `arch` (e.g. 90), by default for the current
    CUDA device: the GPU building the engine.

    Raises MissingDependencyError (naming the `trt` extra) without the full `tensorrt` package.
    """
    trt = require("tensorrt", "trt")
    trtp = require("tensorrt.plugin", "trt")
    if _registered:
        return list(_registered)
    _register_attention(trt, trtp, arch)
    _register_stitch(trt, trtp, arch)
    _register_ms_deform_attn(trt, trtp, arch)
    _registered.extend([ATTENTION_PLUGIN, STITCH_PLUGIN, MS_DEFORM_ATTN_PLUGIN])
    return list(_registered)


def _const(expr, what: str) -> int:
    """The value of a build-time constant ShapeExpr (`is_constant` is a property, `constant_value`
    a method in tensorrt.plugin)."""
    if not expr.is_constant:
        raise ValueError(f"{what} must be static in the network (it is compiled into the kernel)")
    return int(expr.constant_value())


def _aot_return(trtp):
    """The return annotation tensorrt.plugin's aot_impl validator requires: (kernel name, PTX,
    launch parameters, extra scalar arguments)."""
    return tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]


def _register_attention(trt, trtp, arch: int | None) -> None:
    dtypes = {trt.float16: "float16", trt.bfloat16: "bfloat16"}
    aot_return = _aot_return(trtp)

    @trtp.register(ATTENTION_PLUGIN)
    def attention_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune(ATTENTION_PLUGIN)
    def attention_autotune(q, k, v, outputs):
        return [trtp.AutoTuneCombination("FP16|BF16, FP16|BF16, FP16|BF16, FP16|BF16", "LINEAR")]

    @trtp.aot_impl(ATTENTION_PLUGIN)
    def attention_aot(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc],
                      tactic: int) -> aot_return:
        hd = _const(q.shape_expr[3], "the attention head dim")
        cfg = attention_engine_config(hd)
        kern = compile_attention_ptx(dtypes[q.dtype], hd, arch=arch, config=cfg)
        B, H, N = q.shape_expr[0], q.shape_expr[1], q.shape_expr[2]
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(N, cfg["BLOCK_M"])
        launch.grid_y = B * H
        launch.block_x = kern.block_x
        launch.shared_mem = kern.shared
        # [B, H, N, hd] contiguous q, k, v, out: strides (H*N*hd, N*hd, hd) each, then H, N
        strides = [H * N * hd, N * hd, hd] * 4
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in [*strides, H, N]])
        return kern.name, kern.ptx, launch, extra


def _register_stitch(trt, trtp, arch: int | None) -> None:
    aot_return = _aot_return(trtp)

    @trtp.register(STITCH_PLUGIN)
    def stitch_desc(logits: trtp.TensorDesc, image_h: int, image_w: int, crop_h: int, crop_w: int, stride_h: int,
                    stride_w: int, out_h: int, out_w: int) -> trtp.TensorDesc:
        labels = logits.like()
        labels.dtype = trt.int32
        labels.shape_expr = trtp.ShapeExprs(2)
        labels.shape_expr[0] = out_h
        labels.shape_expr[1] = out_w
        return labels

    @trtp.autotune(STITCH_PLUGIN)
    def stitch_autotune(logits, image_h, image_w, crop_h, crop_w, stride_h, stride_w, out_h, out_w, outputs):
        return [trtp.AutoTuneCombination("FP32|FP16, INT32", "LINEAR")]

    @trtp.aot_impl(STITCH_PLUGIN)
    def stitch_aot(logits: trtp.TensorDesc, image_h: int, image_w: int, crop_h: int, crop_w: int, stride_h: int,
                   stride_w: int, out_h: int, out_w: int, outputs: tuple[trtp.TensorDesc], tactic: int) -> aot_return:
        from dinov3_deploy.reference.protocol.sliding_window import window_geometry

        g = window_geometry(image_h, image_w, (crop_h, crop_w), (stride_h, stride_w))
        cfg = stitch_engine_config()
        dt = "float16" if logits.dtype == trt.float16 else "float32"
        kern = compile_stitch_ptx(dt, "int32", resize=(out_h, out_w) != (image_h, image_w), arch=arch, config=cfg)
        launch = trtp.KernelLaunchParams()
        launch.grid_x, launch.grid_y = out_h, math.ceil(out_w / cfg["BLOCK_P"])  # as stitch_grid: rows on x
        launch.block_x = kern.block_x
        launch.shared_mem = kern.shared
        vals = dict(H=image_h, W=image_w, C=logits.shape_expr[1], LH=logits.shape_expr[2], LW=logits.shape_expr[3],
                    crop_h=g.crop_h, crop_w=g.crop_w, stride_h=g.stride_h, stride_w=g.stride_w, n_rows=g.n_rows,
                    n_cols=g.n_cols, win_h=g.win_h, win_w=g.win_w, OH=out_h, OW=out_w)
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(vals[n]) for n in STITCH_INTS])
        return kern.name, kern.ptx, launch, extra


def _register_ms_deform_attn(trt, trtp, arch: int | None) -> None:
    dtypes = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16"}
    aot_return = _aot_return(trtp)

    @trtp.register(MS_DEFORM_ATTN_PLUGIN)
    def ms_deform_attn_desc(value: trtp.TensorDesc, level_shapes: trtp.TensorDesc, locations: trtp.TensorDesc,
                            weights: trtp.TensorDesc) -> trtp.TensorDesc:
        out = value.like()
        out.shape_expr = trtp.ShapeExprs(3)
        out.shape_expr[0] = value.shape_expr[0]
        out.shape_expr[1] = locations.shape_expr[1]
        out.shape_expr[2] = value.shape_expr[2] * value.shape_expr[3]
        return out

    @trtp.autotune(MS_DEFORM_ATTN_PLUGIN)
    def ms_deform_attn_autotune(value, level_shapes, locations, weights, outputs):
        # value, locations, weights and out share one float type; the level sizes are int32
        return [trtp.AutoTuneCombination("FP32|FP16|BF16, INT32, FP32|FP16|BF16, FP32|FP16|BF16, FP32|FP16|BF16",
                                         "LINEAR")]

    @trtp.aot_impl(MS_DEFORM_ATTN_PLUGIN)
    def ms_deform_attn_aot(value: trtp.TensorDesc, level_shapes: trtp.TensorDesc, locations: trtp.TensorDesc,
                           weights: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc], tactic: int) -> aot_return:
        hd = _const(value.shape_expr[3], "the deformable attention head dim")
        n_levels = _const(locations.shape_expr[3], "the number of levels")
        n_points = _const(locations.shape_expr[4], "the number of points")
        cfg = ms_deform_attn_engine_config(hd)
        kern = compile_ms_deform_attn_ptx(dtypes[value.dtype], hd, n_levels, n_points, arch=arch, config=cfg)
        B, M, Q = value.shape_expr[0], value.shape_expr[2], locations.shape_expr[1]
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(Q, cfg["BLOCK_Q"])  # query blocks on x (CUDA caps y at 65535)
        launch.grid_y = B * M
        launch.block_x = kern.block_x
        launch.shared_mem = kern.shared
        vals = dict(Q=Q, M=M, H0=0, W0=0, H1=0, W1=0, H2=0, W2=0, H3=0, W3=0)
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(vals[n]) for n in MS_DEFORM_ATTN_INTS])
        return kern.name, kern.ptx, launch, extra


# The attributes of every plugin node. TensorRT's ONNX parser resolves a node it has no importer for to the
# plugin named by its op_type in the namespace `plugin_namespace`; `aot` (a bool, written as an int) makes it
# take the plugin's ahead-of-time implementation (@trtp.aot_impl, the PTX compiled here) instead of looking
# for a JIT @trtp.impl, which these plugins do not register (TensorRT's quickly_deployable_plugins sample,
# "ONNX model with an AOT plugin").
PLUGIN_NODE_ATTRS = {"plugin_namespace": "dinov3_deploy", "plugin_version": "1", "aot": 1}


def _plugin_node_attributes() -> list:
    from onnx.defs import OpSchema

    string, integer = OpSchema.AttrType.STRING, OpSchema.AttrType.INT
    return [OpSchema.Attribute(name, string if isinstance(v, str) else integer, "")
            for name, v in PLUGIN_NODE_ATTRS.items()]


def ms_deform_attn_onnx_schema():
    """ONNX schema of the deformable-attention plugin node, `dinov3_deploy.ms_deform_attn(value,
    level_shapes, locations, weights)`, for the exporter that emits it (kept local: nothing is
    registered in onnx's global table)."""
    from onnx.defs import OpSchema

    return OpSchema(
        "ms_deform_attn", "dinov3_deploy", 1,
        doc="multi-scale deformable attention: value [B, S, M, Dh] (levels flattened row-major, concatenated), "
            "level_shapes int32 [L, 2] (h, w), locations [B, Q, M, L, P, 2] (x, y in [0, 1]), weights "
            "[B, Q, M, L, P] -> [B, Q, M*Dh] (TensorRT plugin)",
        inputs=[OpSchema.FormalParameter("value", "T"), OpSchema.FormalParameter("level_shapes", "tensor(int32)"),
                OpSchema.FormalParameter("locations", "T"), OpSchema.FormalParameter("weights", "T")],
        outputs=[OpSchema.FormalParameter("out", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "")],
        attributes=_plugin_node_attributes(),
    )


# ----------------------------------------------------------------------------------------------
# ONNX: the custom ops as nodes TensorRT's ONNX parser maps to the plugins
# ----------------------------------------------------------------------------------------------
def _attention_schema():
    """ONNX schema of the plugin node (kept local: nothing is registered in onnx's global table)."""
    from onnx.defs import OpSchema

    return OpSchema(
        "attention", "dinov3_deploy", 1,
        doc="softmax(q k^T / sqrt(head_dim)) v for [B, H, N, head_dim] q, k, v (TensorRT plugin)",
        inputs=[OpSchema.FormalParameter(n, "T") for n in ("q", "k", "v")],
        outputs=[OpSchema.FormalParameter("out", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "")],
        attributes=_plugin_node_attributes(),
    )


def onnx_translation_table(plugin: bool = True) -> dict:
    """`custom_translation_table` for `torch.onnx.export(..., dynamo=True)` of a model built with
    attn_impl="triton".

    `dinov3_deploy::rope_attention` becomes the qkv split and RoPE in standard ONNX ops (RoPE in
    fp32, prefix tokens passed through, as the reference graph does) around one
    `dinov3_deploy.attention(q, k, v)` node carrying `plugin_namespace`/`plugin_version`: the
    node TensorRT's parser resolves to the `dinov3_deploy::attention` plugin. With plugin=False
    the attention is emitted in standard ops instead (softmax in fp32), so the translation can be
    checked numerically with ONNX Runtime, which knows no such node.
    """
    import onnxscript
    import torch
    from onnxscript import opset18 as op

    import dinov3_deploy.kernels.fused_attention  # noqa: F401  (registers the custom ops)

    custom = onnxscript.values.Opset("dinov3_deploy", 1)
    FLOAT = onnxscript.ir.DataType.FLOAT
    attention_node = onnxscript.values.Op(custom, "attention", _attention_schema())

    def attention_core(q, k, v):
        if plugin:
            return attention_node(q, k, v, **PLUGIN_NODE_ATTRS)
        hd = op.Cast(op.Slice(op.Shape(q), [-1], [2**62]), to=FLOAT)
        scale = op.Div(op.Constant(value_float=1.0), op.Sqrt(hd))
        s = op.MatMul(op.Cast(q, to=FLOAT), op.Transpose(op.Cast(k, to=FLOAT), perm=[0, 1, 3, 2]))
        p = op.Softmax(op.Mul(s, scale), axis=-1)
        return op.CastLike(op.MatMul(p, op.Cast(v, to=FLOAT)), v)

    def rope(x, sin, cos):
        n = op.Slice(op.Shape(x), [2], [3])
        n_prefix = op.Sub(n, op.Slice(op.Shape(sin), [0], [1]))
        pre = op.Slice(x, [0], n_prefix, [2])
        pat = op.Cast(op.Slice(x, n_prefix, [2**62], [2]), to=FLOAT)
        x1, x2 = op.Split(pat, axis=-1, num_outputs=2)
        rotated = op.Add(op.Mul(pat, cos), op.Mul(op.Concat(op.Neg(x2), x1, axis=-1), sin))
        return op.Concat(pre, op.CastLike(rotated, x), axis=2)

    def rope_attention(qkv, sin, cos, num_heads: int, use_tma: bool = False):
        x = op.Transpose(op.Reshape(qkv, op.Constant(value_ints=[0, 0, 3, num_heads, -1])), perm=[2, 0, 3, 1, 4])
        q, k, v = op.Split(x, axis=0, num_outputs=3)
        q, k, v = (op.Squeeze(t, [0]) for t in (q, k, v))
        if sin is not None:
            q, k = rope(q, sin, cos), rope(k, sin, cos)
        out = attention_core(q, k, v)  # [B, H, N, hd]
        return op.Reshape(op.Transpose(out, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))

    def attention(q, k, v, scale: float | None = None):
        if scale is not None:
            raise ValueError("the attention plugin uses the default scale 1/sqrt(head_dim)")
        return attention_core(q, k, v)

    return {
        torch.ops.dinov3_deploy.rope_attention.default: rope_attention,
        torch.ops.dinov3_deploy.attention.default: attention,
    }


def ms_deform_attn_translation_table() -> dict:
    """`custom_translation_table` entry for a Mask2Former built with `set_deform_impl("triton")`: each
    `dinov3_deploy::ms_deform_attn` op becomes one `dinov3_deploy.ms_deform_attn(value, level_shapes,
    locations, weights)` node for the plugin of that name. The op's flat level sizes [h0, w0, h1, ...]
    (symbolic under torch.export, computed in the graph from the image's H and W) arrive as one int64
    tensor; the plugin reads them as an int32 [L, 2] input, so one engine serves every H/W of its profile."""
    import onnxscript
    import torch
    from onnxscript import opset18 as op

    import dinov3_deploy.kernels.ms_deform_attn  # noqa: F401  (registers the custom op)

    node = onnxscript.values.Op(onnxscript.values.Opset("dinov3_deploy", 1), "ms_deform_attn",
                                ms_deform_attn_onnx_schema())
    INT32 = onnxscript.ir.DataType.INT32

    def ms_deform_attn(value, level_shapes, locations, weights):
        shapes = op.Cast(op.Reshape(level_shapes, op.Constant(value_ints=[-1, 2])), to=INT32)
        return node(value, shapes, locations, weights, **PLUGIN_NODE_ATTRS)

    return {torch.ops.dinov3_deploy.ms_deform_attn.default: ms_deform_attn}

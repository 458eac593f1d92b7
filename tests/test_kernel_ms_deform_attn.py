"""The deformable-attention kernel against the plain PyTorch core (reference.models.ms_deform_attn,
itself checked against hand-looped bilinear sampling in test_m2f_deform_attn.py): odd and
non-square levels, points on, across and far outside the maps, fp32 and fp16, both ways of passing
level shapes (ints for the torch op, an int32 tensor for the TensorRT plugin), the custom op's fake
implementation, and the module / segmentor switch."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import

from dinov3_deploy.kernels.ms_deform_attn import (  # noqa: E402
    _ms_deform_attn_kernel,
    ms_deform_attn,
    ms_deform_attn_flat,
    ms_deform_attn_into,
)
from dinov3_deploy.reference.models.ms_deform_attn import (  # noqa: E402
    MSDeformAttn,
    ms_deform_attn_core,
    reference_points,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(shapes, B=2, Q=13, M=2, Dh=6, P=3, seed=0, dtype=torch.float32):
    """Random value / locations / weights; locations spread over [-0.3, 1.3] (a third of the points
    off the map or straddling its border), plus points exactly on the edges and far away."""
    g = torch.Generator().manual_seed(seed)
    L = len(shapes)
    value = torch.randn(B, sum(h * w for h, w in shapes), M, Dh, generator=g)
    loc = torch.rand(B, Q, M, L, P, 2, generator=g) * 1.6 - 0.3
    loc[0, 0, 0, 0, 0] = torch.tensor([0.0, 1.0])  # the map's corner: a quarter of a pixel
    loc[0, 1, 0, 0, 1] = torch.tensor([-0.75, 0.5])  # wholly outside
    loc[-1, 2, -1, L - 1, 0] = torch.tensor([3e4, -3e4])  # far off (finite in fp16): clamped, still zero
    loc[-1, 3, 0, 0, -1] = torch.tensor([0.5, 0.5])  # the centre
    weights = torch.rand(B, Q, M, L, P, generator=g)
    return tuple(t.to(DEV, dtype) for t in (value, loc, weights))


@pytest.mark.parametrize("shapes", [
    [(3, 5), (2, 7), (1, 1)],  # odd, non-square (both orientations), a 1x1 level
    [(7, 3)],  # one level
    [(4, 4), (2, 3), (3, 1), (1, 2)],  # four levels (the most the kernel takes)
])
def test_matches_the_reference_core_fp32(shapes):
    value, loc, weights = inputs(shapes)
    got = ms_deform_attn_flat(value, shapes, loc, weights)
    want = ms_deform_attn_core(value, shapes, loc, weights)
    assert got.shape == want.shape == (2, 13, 12) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_points_off_the_map_contribute_nothing():
    shapes = [(3, 5), (2, 2)]
    value, loc, weights = inputs(shapes, B=1, Q=5, M=1, Dh=4, P=2)
    loc[..., 0] = -0.6  # more than a pixel left of every level (px = -0.6 w - 0.5)
    got = ms_deform_attn_flat(value, shapes, loc, weights)
    assert got.abs().max() == 0  # every tap is zero padding
    loc[..., 0] = 1.05  # past the right border by less than half a pixel: part of the edge pixel
    got = ms_deform_attn_flat(value, shapes, loc, weights)
    torch.testing.assert_close(got, ms_deform_attn_core(value, shapes, loc, weights), rtol=1e-5, atol=1e-5)
    assert got.abs().max() > 0


def test_fp16_inputs_accumulate_in_fp32():
    """fp16 value/locations/weights: the kernel sums in fp32 and rounds once, so it is as close to
    the fp32 core on the same (fp16-rounded) inputs as one fp16 rounding of the result."""
    shapes = [(5, 3), (3, 2)]
    value, loc, weights = inputs(shapes, Q=9, Dh=8, P=4, seed=3, dtype=torch.float16)
    got = ms_deform_attn_flat(value, shapes, loc, weights)
    assert got.dtype == torch.float16
    want = ms_deform_attn_core(value.float(), shapes, loc.float(), weights.float())
    torch.testing.assert_close(got.float(), want, rtol=1e-3, atol=2e-3)


def test_levels_from_an_int32_tensor_as_the_plugin_passes_them():
    """The TensorRT plugin's variant (SHAPES_FROM_TENSOR: level sizes read from an [L, 2] tensor,
    the scalar size arguments unused) computes the same as the torch op."""
    shapes = [(3, 5), (2, 7), (1, 3)]
    value, loc, weights = inputs(shapes, Q=11, Dh=8)
    B, _, M, Dh = value.shape
    out = torch.full((B, 11, M * Dh), float("nan"), device=DEV)
    shape_t = torch.tensor(shapes, dtype=torch.int32, device=DEV)
    _ms_deform_attn_kernel[(2, B * M)](value, shape_t, loc, weights, 11, M, *([0] * 8), out, DH=Dh, N_LEVELS=3,
                                       N_POINTS=3, BLOCK_Q=8, BLOCK_D=8, SHAPES_FROM_TENSOR=True)
    torch.testing.assert_close(out, ms_deform_attn_core(value, shapes, loc, weights), rtol=1e-5, atol=1e-5)


def test_writes_into_a_given_output_and_checks_shapes():
    shapes = [(3, 3), (2, 1)]
    value, loc, weights = inputs(shapes, B=1, Q=5, M=2, Dh=4, P=2)
    out = torch.full((1, 5, 8), float("nan"), device=DEV)
    assert ms_deform_attn_into(value, shapes, loc, weights, out) is out
    torch.testing.assert_close(out, ms_deform_attn_core(value, shapes, loc, weights), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="hold 10 tokens, value has 11"):
        ms_deform_attn_flat(value, [(3, 3), (2, 1)][:1] + [(1, 1)], loc, weights)
    with pytest.raises(ValueError, match="1 to 4 levels"):
        ms_deform_attn_flat(value, [(1, 1)] * 5 + [(2, 3)], loc, weights)
    with pytest.raises(ValueError, match="weights"):
        ms_deform_attn_flat(value, shapes, loc, weights[..., :1, :])


def test_fake_implementation_gives_the_output_shape_without_running():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        value = torch.empty(2, 40, 16, 128, dtype=torch.bfloat16)
        loc = torch.empty(2, 40, 16, 3, 4, 2, dtype=torch.bfloat16)
        weights = torch.empty(2, 40, 16, 3, 4, dtype=torch.bfloat16)
        out = ms_deform_attn(value, [4, 6, 2, 3, 2, 2], loc, weights)
    assert out.shape == (2, 40, 2048) and out.dtype == torch.bfloat16
    # level sizes are SymInts: torch.export keeps them symbolic (dynamic H/W), as the plain core's
    assert "SymInt[] level_shapes" in str(torch.ops.dinov3_deploy.ms_deform_attn.default._schema)
    value, loc, weights = inputs([(3, 5), (2, 3)], B=1, Q=7, Dh=4, P=2)
    torch.library.opcheck(ms_deform_attn, (value, [3, 5, 2, 3], loc, weights), test_utils=("test_schema",
                                                                                         "test_faketensor"))


def test_module_switch_runs_the_kernel():
    """MSDeformAttn(impl="triton") gives the plain module's output (the segmentor's
    set_deform_impl / create_segmentor(deform_impl=...) set this attribute on every such module)."""
    torch.manual_seed(0)
    shapes = [(4, 6), (2, 3), (1, 2)]
    attn = MSDeformAttn(32, n_levels=3, n_heads=4, n_points=2, ratio=0.5).eval().to(DEV)
    with torch.no_grad():
        for lin in (attn.sampling_offsets, attn.attention_weights):
            lin.weight.normal_(0, 0.5)
            lin.bias.normal_(0, 1.0)
        ref = reference_points(shapes, device=DEV)
        query = torch.randn(1, ref.shape[0], 32, device=DEV)
        plain = attn(query, ref, query, shapes)
        attn.impl = "triton"
        got = attn(query, ref, query, shapes)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)
    attn.impl = "cuda"
    with pytest.raises(ValueError, match="'cuda'"):
        attn(query, ref, query, shapes)


def test_segmentor_factory_sets_the_switch_on_every_module():
    from dinov3_deploy.reference import create_segmentor

    model = create_segmentor("vits16", hidden_dim=256, deform_impl="triton", device="meta")
    impls = {m.impl for m in model.modules() if isinstance(m, MSDeformAttn)}
    assert impls == {"triton"}
    with pytest.raises(ValueError, match="deform_impl"):
        model.set_deform_impl("grid_sample")


@pytest.mark.slow
def test_small_segmentor_forward_with_the_kernel(monkeypatch):
    """The whole segmentor (6 adapter extractors, 6 pixel-decoder layers) with deform_impl="triton"
    gives the plain one's class and mask logits (32x32: levels 4x4 / 2x2 / 1x1)."""
    from dinov3_deploy.kernels import ms_deform_attn as K
    from dinov3_deploy.reference import create_segmentor

    if DEV == "cpu":  # one program per (batch, head) keeps the interpreter's Python loop short
        monkeypatch.setattr(K, "ms_deform_attn_config", lambda hd, dev: dict(BLOCK_Q=32, num_warps=4))
    model = create_segmentor("vits16", hidden_dim=64, num_classes=5, device=DEV)
    x = torch.randn(1, 3, 32, 32, device=DEV)
    with torch.no_grad():
        plain = model(x)
        got = model.set_deform_impl("triton")(x)
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(got[key], plain[key], rtol=1e-4, atol=1e-4)


def test_bench_summary_quotes_the_goals_against_the_plain_core(tmp_path):
    """gpu_check.sh's summary reads the msda rows of kernels.json: speedup over the plain core
    (eager and compiled) and peak memory, next to the goals."""
    import json

    from dinov3_deploy.bench.kernels_bench import msda_cases, summarize

    name, levels, q, heads, hd, points = msda_cases(False)[0]
    assert levels == [(112, 112), (56, 56), (28, 28)] and q == 16464 and (heads, hd, points) == (16, 128, 4)
    shape = f"{name} B=1 Q={q}"
    rows = [{"section": "msda", "target": t, "shape": shape, "status": "ok", "median_ms": ms, "peak_mem_mb": mb}
            for t, ms, mb in (("triton", 2.0, 300.0), ("plain_eager", 9.0, 2000.0), ("plain_compile", 7.0, 1800.0))]
    (tmp_path / "kernels.json").write_text(json.dumps({"rows": rows}))
    line = next(ln for ln in summarize(tmp_path).splitlines() if ln.startswith("msda"))
    assert line.startswith("msda pixel_decoder_hidden2048:") and "4.50x plain_eager" in line
    assert "3.50x plain_compile" in line and "triton 2.0 ms 300.0 MB" in line and "3x" in line


def test_plugin_node_schema_for_the_exporter():
    """The ONNX node the exporter emits for TensorRT's dinov3_deploy::ms_deform_attn plugin: inputs
    in the torch op's order, level sizes as an int32 [L, 2] tensor, one float type throughout."""
    from dinov3_deploy.engines.plugins import MS_DEFORM_ATTN_PLUGIN, ms_deform_attn_onnx_schema

    schema = ms_deform_attn_onnx_schema()
    assert f"{schema.domain}::{schema.name}" == MS_DEFORM_ATTN_PLUGIN
    assert [p.name for p in schema.inputs] == ["value", "level_shapes", "locations", "weights"]
    assert schema.inputs[1].type_str == "tensor(int32)" and schema.outputs[0].type_str == "T"
    assert set(schema.attributes) == {"plugin_namespace", "plugin_version", "aot"}  # aot: the PTX implementation


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU tensors are refused only without the interpreter")
def test_cpu_tensors_without_the_interpreter_say_what_to_do(monkeypatch):
    from dinov3_deploy.errors import DeployError

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    value, loc, weights = inputs([(2, 2)], B=1, Q=5, M=1, Dh=4, P=2)
    with pytest.raises(DeployError, match="deform_impl='plain'"):
        ms_deform_attn_flat(value, [(2, 2)], loc, weights)

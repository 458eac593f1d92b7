"""Every task x {ViT (MLP; SwiGLU in the 7B shape), ConvNeXt} x {fp32, fp16}: export with dynamic shapes, graph
hygiene, and ONNX Runtime parity against the fp32 PyTorch reference at a batch and resolution that
differ from the export example (so the dynamic axes really work).

Backbones are the tiny test configs cut to one block / one block per stage (same code paths, a
fraction of torch.export's time), with LayerScale gammas raised to 1 so the blocks matter (the
1e-5 init would make every backbone an identity and parity trivially good).
"""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch

from dinov3_deploy.deploy_module import DeployModule
from dinov3_deploy.export.onnx_graph import ensure_clean, export_onnx
from dinov3_deploy.reference.configs import get_config
from dinov3_deploy.reference.factory import build_backbone, build_task_model
from dinov3_deploy.reference.protocol.synthetic import make_sample
from dinov3_deploy.runtime.runners import OrtRunner, TorchRunner
from dinov3_deploy.shapes import DimRange, ShapeSpec
from dinov3_deploy.verification.parity import compare

TASKS = ("features", "seg", "depth", "cls")


# The 7B's code path (SwiGLU aligned to 64, no qkv bias nor bias mask, local_cls_norm present) at tiny size.
VIT7B_LIKE = dataclasses.replace(get_config("vit_tiny_swiglu_test"), name="vit7b_like_test", ffn_ratio=3,
                                 ffn_align=64, qkv_bias=False, mask_k_bias=False, local_cls_norm=True)


def cfg_of(name: str):
    return VIT7B_LIKE if name == VIT7B_LIKE.name else get_config(name)


def stressed_backbone(name: str):
    cfg = cfg_of(name)
    cfg = dataclasses.replace(cfg, depth=1) if cfg.family == "vit" else dataclasses.replace(cfg, depths=(1, 1, 1, 1))
    bb = build_backbone(cfg)
    with torch.no_grad():
        for n, p in bb.named_parameters():
            if n.endswith("gamma"):
                p.fill_(1.0)
    return bb.eval()


def task_model(task: str, backbone_name: str):
    torch.manual_seed(0)
    bb = stressed_backbone(backbone_name)
    bb.set_attn_impl("math")
    return build_task_model(task, bb, n_classes=5)


def shapes_for(multiple: int) -> ShapeSpec:
    return ShapeSpec(DimRange(1, 2, 4), DimRange(multiple, 2 * multiple, 4 * multiple),
                     DimRange(multiple, 2 * multiple, 4 * multiple), multiple)


def images(batch: int, h: int, w: int, seed: int = 7) -> np.ndarray:
    x = np.stack([make_sample(seed + i, h, w)[0] for i in range(batch)]).transpose(0, 3, 1, 2) / 255.0
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    return ((x - mean) / std).astype(np.float32)


class AllTasks(torch.nn.Module):
    """One graph with every task's DeployModule on a shared backbone, outputs named "task.output".
    Same per-task code paths as four exports at a quarter of torch.export's (slow) tracing cost."""

    def __init__(self, models: dict, precision: str, opset: int | None = None) -> None:
        super().__init__()
        self.tasks = torch.nn.ModuleDict({t: DeployModule(m, precision, opset=opset) for t, m in models.items()})
        self.precision, self.uint8_input, self.input_name = precision, False, "pixel_values"
        self.opset = next(iter(self.tasks.values())).opset
        self.opset_islands = [f"{t}.{n}" for t, mod in self.tasks.items() for n in mod.opset_islands]
        self.output_names = [f"{t}.{n}" for t, mod in self.tasks.items() for n in mod.output_names]
        self.example_input = next(iter(self.tasks.values())).example_input
        self.eval()

    def forward(self, x):
        return tuple(o for mod in self.tasks.values() for o in mod(x))


def all_task_models(backbone_name: str, attn_impl: str):
    bb = stressed_backbone(backbone_name)
    bb.set_attn_impl(attn_impl)
    torch.manual_seed(1)
    return {t: build_task_model(t, bb, n_classes=5) for t in TASKS}


# ViT-MLP fp32, ViT-SwiGLU in its 7B shape fp16, ConvNeXt fp32 and fp16
CELLS = [("vit_tiny_test", "fp32"), ("vit7b_like_test", "fp16"), ("convnext_tiny_test", "fp32"),
         ("convnext_tiny_test", "fp16")]


@pytest.mark.parametrize(("backbone", "precision"), CELLS, ids=["-".join(c) for c in CELLS])
def test_every_task_exports_with_dynamic_shapes_and_parity(backbone, precision, tmp_path):
    torch.manual_seed(0)
    models = all_task_models(backbone, "math")
    torch.manual_seed(0)
    reference = AllTasks(all_task_models(backbone, "sdpa"), "fp32")  # same weights, SDPA attention
    ref = TorchRunner(reference)
    module = AllTasks(models, precision)
    mult = cfg_of(backbone).input_multiple
    shapes = shapes_for(mult)
    result = export_onnx(module, tmp_path / "model.onnx", shapes)
    facts = ensure_clean(result.path, precision, shapes)  # checker, shape inference, hygiene

    assert [i["name"] for i in facts.inputs] == ["pixel_values"]
    assert facts.inputs[0]["shape"][0] == "batch" and all(isinstance(d, str) for d in facts.inputs[0]["shape"][2:])
    assert [o["name"] for o in facts.outputs] == module.output_names
    assert facts.opset >= 18 and not {"If", "Tile"} & set(facts.op_counts)
    assert facts.fp32_islands["LayerNormalization"] == {"float32": facts.op_counts["LayerNormalization"]}
    if cfg_of(backbone).family == "vit":  # attention softmax and RoPE stay fp32
        assert set(facts.fp32_islands["Softmax"]) == {"float32"}
        assert set(facts.fp32_islands["Sin"]) == {"float32"} and set(facts.fp32_islands["Cos"]) == {"float32"}
    want = {"fp32": "float32", "fp16": "float16"}[precision]
    assert set(facts.compute_dtypes) == {want}
    if precision == "fp16":
        assert facts.op_counts["Cast"] >= 2 * facts.op_counts["LayerNormalization"]

    # a batch and resolution different from the export example (2 x 2m x 3m)
    assert result.example_shape == [2, 3, 2 * mult, 3 * mult]
    x = images(3, mult, 4 * mult)
    ort_out = OrtRunner(result.path).run(x)
    ref_out = ref.run(x)
    for task in TASKS:
        names = [n for n in module.output_names if n.startswith(task + ".")]
        rows = compare({n: ref_out[n] for n in names}, ort_out, "dynamic", task, precision)
        for r in rows:
            print(f"{backbone}/{precision} {r.output}: rel_fro {r.rel_fro:.2e} cos {r.min_token_cos:.6f} "
                  f"max_abs {r.max_abs:.2e} labels {r.label_agreement}")
        assert rows and all(r.passed for r in rows), [r.failures for r in rows]
    stride = cfg_of(backbone).patch_size  # heads read the last block: the patch grid / ConvNeXt's last stage
    gh, gw = mult // stride, 4 * mult // stride
    assert ort_out["features.cls"].shape == (3, cfg_of(backbone).embed_dim)
    if precision == "fp16" and importlib.util.find_spec("tensorrt_rtx"):
        # TensorRT's parser accepts every task's graph
        from dinov3_deploy.engines.build import build_engine, network_from_onnx, profiles_from_shapes
        from dinov3_deploy.engines.trt_api import load_api

        net = network_from_onnx(result.path, load_api("tensorrt-rtx"))
        engine = build_engine(net, profiles_from_shapes(net, shapes), workspace_gib=0.5, opt_level=0,
                              targets=["SM89"])
        assert [t["name"] for t in engine.facts["io"][1:]] == module.output_names
    assert ort_out["seg.logits"].shape == (3, 5, gh, gw)
    assert ort_out["depth.depth"].shape == (3, 1, gh, gw)
    assert ort_out["cls.logits"].shape == (3, 5)


@pytest.mark.parametrize("backbone", ["vit_tiny_test", "convnext_tiny_test"])
def test_deploy_module_outputs_per_task(backbone):
    """Each task's DeployModule names and shapes its outputs as the manifest documents them."""
    models = all_task_models(backbone, "math")
    family = cfg_of(backbone).family
    x = torch.from_numpy(images(2, 64, 96))
    expect = {
        "features": ["cls", "patch"] if family == "convnext" else ["cls", "storage", "patch"],
        "seg": ["logits"], "depth": ["depth"], "cls": ["logits"],
    }
    for task, model in models.items():
        mod = DeployModule(model, "fp32")
        assert mod.output_names == expect[task]
        outs = TorchRunner(mod).run(x.numpy())
        assert list(outs) == expect[task] and all(o.dtype == np.float32 for o in outs.values())
    seg = DeployModule(models["seg"], "fp32", seg_output="labels", uint8_input=True)
    u8 = np.stack([make_sample(7 + i, 64, 96)[0] for i in range(2)])  # the images of `x`
    outs = TorchRunner(seg).run(u8)
    assert list(outs) == ["logits", "labels"] and outs["labels"].shape == (2, 64, 96)
    assert outs["labels"].dtype == np.int32
    # in-graph preprocessing == the caller's normalisation
    plain = TorchRunner(DeployModule(models["seg"], "fp32")).run(x.numpy())
    np.testing.assert_allclose(outs["logits"], plain["logits"], rtol=1e-5, atol=1e-5)


# bf16 is what opset <= 20 changes (patchify MatMuls, fp32 depthwise islands): those cells run by
# default; the fp16 cells (~30 s each on 2 cores) with `pytest -m slow`.
OPSET20 = [pytest.param(b, p, id=f"{b}-{p}", marks=[pytest.mark.slow] if p == "fp16" else [])
           for b in ("vit_tiny_test", "convnext_tiny_test") for p in ("fp16", "bf16")]


@pytest.mark.parametrize(("backbone", "precision"), OPSET20)
def test_every_task_exports_at_opset_20_and_builds(backbone, precision, tmp_path):
    """TensorRT 10.0's parser reads opsets 9-20: every task exports there in fp16 and bf16 (bf16 Conv
    needs opset 22: patchify convs become MatMul, ConvNeXt's depthwise convs stay fp32 islands)."""
    import onnx

    torch.manual_seed(0)
    module = AllTasks(all_task_models(backbone, "math"), precision, opset=20)
    shapes = shapes_for(cfg_of(backbone).input_multiple)
    result = export_onnx(module, tmp_path / "model.onnx", shapes)
    onnx.checker.check_model(onnx.load(str(result.path)), full_check=True)
    facts = ensure_clean(result.path, precision, shapes, fp32_ops=len(module.opset_islands))
    assert facts.opset == 20
    if precision == "bf16":
        is_convnext = cfg_of(backbone).family == "convnext"
        assert bool(module.opset_islands) == is_convnext  # the 7x7 depthwise convs; ViT has none
        assert all(n.endswith("dwconv") for n in module.opset_islands), module.opset_islands
        # every Conv left is an fp32 island and nothing else runs in fp32 (the exporter may merge the
        # four tasks' identical backbone copies, so there can be fewer Convs than islands listed)
        assert facts.compute_dtypes.get("float32", 0) == facts.op_counts.get("Conv", 0) <= len(module.opset_islands)
        assert facts.op_counts.get("Conv", 0) > 0 or not is_convnext
    if importlib.util.find_spec("tensorrt_rtx"):
        from dinov3_deploy.engines.build import build_engine, network_from_onnx, profiles_from_shapes
        from dinov3_deploy.engines.trt_api import load_api

        net = network_from_onnx(result.path, load_api("tensorrt-rtx"))
        engine = build_engine(net, profiles_from_shapes(net, shapes), workspace_gib=0.5, opt_level=0,
                              targets=["SM89"])
        assert [t["name"] for t in engine.facts["io"][1:]] == module.output_names

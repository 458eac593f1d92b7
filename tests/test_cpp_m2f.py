"""Mask2Former artifacts in the C++ runtime (engines/cpp m2f.h) held to `dinov3-deploy infer --backend
onnxruntime`, as test_cpp_runtime.py holds the linear head: labels identical pixel for pixel.

The M2F protocol adds three pieces of arithmetic a near-tie can hang on, each checked against its Python
counterpart first (fast): PIL's uint8 resize of the views, PyTorch's CPU softmax over the classes (the views'
probabilities are summed), and the plan of views and windows (TTA short sides, view sizes, stride, the
refusal of windows that are not multiples of 32). Then the command line end to end on a tiny M2F
artifact (slow: its export takes minutes on 2 cores), with and without --tta, on odd sizes."""

import json
import os

import numpy as np
import pytest
from cli_helpers import export_tiny
from PIL import Image
from test_cpp_runtime import _assert_same_labels, _cpp, _image, _py_infer, _written, cpp_build

SHAPE = ["--batch", "1:1:2", "--height", "64:64:96", "--width", "64:64:128"]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return cpp_build(tmp_path_factory)  # the session's one build, shared with test_cpp_runtime.py


def _probe(build, *args, threads: int | None = None, vec: int | None = None):
    """The probe; `threads`, `vec`: the PyTorch thread count and vector width it is to match."""
    import subprocess

    if threads is None and vec is None:
        r = _cpp(build, *args, tool="dinov3-deploy-probe")
    else:
        env = {**os.environ, "DINOV3_TORCH_THREADS": str(threads or 1)}
        if vec:
            env["DINOV3_TORCH_VEC_FLOATS"] = str(vec)
        r = subprocess.run([str(build / "dinov3-deploy-probe"), *map(str, args)], capture_output=True, text=True,
                           env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("size", [(37, 53, 64, 91), (131, 97, 86, 64), (300, 211, 64, 45), (21, 300, 18, 256),
                                  (64, 64, 64, 96), (100, 100, 100, 67), (5, 7, 70, 90), (480, 640, 67, 89)])
def test_pil_resize_is_pil_byte_for_byte(build, tmp_path, size):
    """Shrinking (PIL's filter then spans several pixels), enlarging, one axis unchanged."""
    h, w, oh, ow = size
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    image.tofile(tmp_path / "in.bin")
    _probe(build, "pil-resize", tmp_path / "in.bin", h, w, oh, ow, tmp_path / "out.bin")
    got = np.fromfile(tmp_path / "out.bin", dtype=np.uint8).reshape(oh, ow, 3)
    want = np.asarray(Image.fromarray(image).resize((ow, oh), Image.BILINEAR))
    assert (got != want).sum() == 0


SOFTMAX_CASES = [(5, 131, 97, 30), (150, 37, 53, 3), (3, 17, 19, 1e-3), (21, 61, 67, 10), (2, 1, 3, 5)]


def _torch_softmax(x: np.ndarray, threads: int, capability: str | None, tmp_path) -> np.ndarray:
    """torch.softmax(dim=1) of [C, H, W] with `threads` intra-op threads, in this process or, for another
    CPU capability (fixed when PyTorch starts), in a fresh one."""
    import torch

    if capability is None:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return torch.softmax(torch.from_numpy(x)[None], 1)[0].numpy()
        finally:
            torch.set_num_threads(old)
    import subprocess
    import sys

    np.save(tmp_path / "x.npy", x)
    code = (f"import numpy as np, torch; torch.set_num_threads({threads}); x = np.load({str(tmp_path / 'x.npy')!r}); "
            f"np.save({str(tmp_path / 'want.npy')!r}, torch.softmax(torch.from_numpy(x)[None], 1)[0].numpy())")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    return np.load(tmp_path / "want.npy")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_softmax_is_pytorch_bit_for_bit(build, tmp_path, threads):
    """torch.softmax(dim=1) of [1, C, H, W]: SLEEF's exp on whole vectors of pixels, the scalar exp on the
    tail of each thread's chunk; pixel counts that leave tails, 150 classes as ADE20K, logits up to +-100."""
    rng = np.random.default_rng(threads)
    for c, h, w, scale in SOFTMAX_CASES:
        x = (rng.standard_normal((c, h, w)) * scale).astype(np.float32)
        x.tofile(tmp_path / "in.bin")
        _probe(build, "softmax", tmp_path / "in.bin", c, h, w, tmp_path / "out.bin", threads=threads)
        got = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(c, h, w)
        want = _torch_softmax(x, threads, None, tmp_path)
        assert (got != want).sum() == 0, f"{(got != want).sum()} of {got.size} differ ({c}x{h}x{w})"


def test_softmax_follows_pytorchs_vector_width(build, tmp_path):
    """PyTorch under ATEN_CPU_CAPABILITY=avx2 vectorises 8 floats, so other pixels fall to the scalar tail:
    DINOV3_TORCH_VEC_FLOATS=8 matches it, the AVX512 width does not (the width is part of the arithmetic)."""
    import torch

    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("needs a CPU where PyTorch runs its AVX512 kernels")
    rng = np.random.default_rng(7)
    differ = {8: 0, 16: 0}
    for c, h, w, scale in SOFTMAX_CASES[:4]:
        x = (rng.standard_normal((c, h, w)) * scale).astype(np.float32)
        x.tofile(tmp_path / "in.bin")
        want = _torch_softmax(x, 3, "avx2", tmp_path)
        for width in differ:
            _probe(build, "softmax", tmp_path / "in.bin", c, h, w, tmp_path / "out.bin", threads=3, vec=width)
            differ[width] += int((np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(c, h, w) != want).sum())
    assert differ[8] == 0 and differ[16] > 0, differ


PLANS = [(37, 53, 64, 0), (131, 97, 64, 0), (21, 300, 64, 0), (896, 1344, 896, 0), (512, 683, 896, 0),
         (70, 45, 64, 40), (1000, 30, 96, 200), (333, 77, 128, 0)]


@pytest.mark.parametrize("tta", [False, True])
def test_view_plan_matches_python(build, tta):
    """Stride (596/896 of the window, or the requested one clamped), each view's short side and size,
    and the protocol's refusal of a view whose windows are not multiples of 32, in the same words."""
    from dinov3_deploy.reference.protocol.m2f import TTA_RATIOS, check_windows, tta_short_sides
    from dinov3_deploy.reference.training.transforms import rescale_size
    from dinov3_deploy.runtime.m2f_prediction import m2f_stride

    for h, w, window, stride in PLANS:
        got = json.loads(_probe(build, "m2f-plan", h, w, window, stride, int(tta)).stdout)
        step = m2f_stride(window, stride or None)
        assert got["stride"] == step
        sides = tta_short_sides(window, TTA_RATIOS if tta else (1.0,))
        assert [v["side"] for v in got["views"]] == sides
        for view, side in zip(got["views"], sides):
            vh, vw = rescale_size(h, w, side, 4 * side)
            assert view["size"] == [vh, vw], (h, w, window, side)
            try:
                check_windows(vh, vw, window, step)
                error = ""
            except ValueError as exc:
                error = str(exc)
            assert view["error"] == error


# ------------------------------------------------------------------------------------------------
# dinov3-deploy-cpp against dinov3-deploy infer on a Mask2Former artifact (slow: the export)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def m2f_artifact(tmp_path_factory):
    """A tiny M2F head that draws several classes: class embeddings N(0, 0.3) and mask embeddings x1.5 (the
    random head alone scores one class nearly everywhere, and a comparison of constant labels cannot fail)."""
    import torch
    from click.testing import CliRunner

    from dinov3_deploy.cli import cli
    from dinov3_deploy.reference import create_segmentor
    from dinov3_deploy.reference.formats.m2f_checkpoint import save_m2f_head

    seg = create_segmentor("vit_tiny_test", hidden_dim=32, num_classes=5, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in seg.named_parameters():
            if name.endswith("class_embed.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif "mask_embed" in name and name.endswith("weight"):
                p.mul_(1.5)
    root = tmp_path_factory.mktemp("cpp_m2f")
    head = save_m2f_head(root / "head", seg, backbone="vit_tiny_test", backbone_seed=0)
    res = CliRunner().invoke(cli, ["export", "--task", "seg", "--head", str(head), *SHAPE, "--no-verify",
                                   "--out", str(root / "art")])
    assert res.exit_code == 0, res.output
    return root / "art"


@pytest.fixture(scope="module")
def m2f_images(tmp_path_factory):
    """Odd sizes: smaller than the window, taller than wide, grey, RGBA in a sub-folder, and a 21x300
    strip whose 18x256 view gives windows the segmentor refuses (both runtimes report it)."""
    d = tmp_path_factory.mktemp("cpp_m2f_images")
    (d / "sub").mkdir()
    Image.fromarray(_image(37, 53, 10)).save(d / "odd.png")
    Image.fromarray(_image(131, 97, 11)).save(d / "tall.png")
    Image.fromarray(_image(70, 45, 12)[..., 0]).save(d / "grey.png")
    rgba = np.dstack([_image(50, 81, 13), np.full((50, 81, 1), 200, dtype=np.uint8)])
    Image.fromarray(rgba).save(d / "sub" / "rgba.png")
    Image.fromarray(_image(21, 300, 14)).save(d / "strip.png")
    return d


def _run_both(build, art, inputs, tmp_path, *extra):
    c = _cpp(build, art, *inputs, "-o", tmp_path / "cpp", *extra)
    p = _py_infer(art, inputs, tmp_path / "py", *extra)
    return c, p


def _classes_seen(out) -> set[int]:
    return {int(v) for f in out.rglob("*_labels.png") for v in np.unique(np.asarray(Image.open(f)))}


@pytest.mark.slow
@pytest.mark.parametrize("tta", [False, True])
def test_m2f_labels_identical(build, m2f_artifact, m2f_images, tmp_path, tta):
    extra = ["--tta"] if tta else []
    c, p = _run_both(build, m2f_artifact, [m2f_images], tmp_path, *extra)
    assert c.returncode == p.exit_code == 1, c.stderr + p.output  # the strip fails in both, the others are written
    cpp_out, py_out = tmp_path / "cpp", tmp_path / "py"
    assert _written(cpp_out) == _written(py_out)
    assert _assert_same_labels(cpp_out, py_out) == 4
    assert len(_classes_seen(py_out)) >= 3  # not one class everywhere: the comparison can fail
    failures = json.loads((cpp_out / "predictions.json").read_text())["failures"]
    want = json.loads((py_out / "predictions.json").read_text())["failures"]
    assert failures == want and [f["image"] for f in failures] == ["strip.png"]
    assert "gives 18x64 windows with crop 64" in failures[0]["reason"]
    runs = [json.loads((o / "predictions.json").read_text())["summary"]["windows_run"] for o in (cpp_out, py_out)]
    assert runs[0] == runs[1]  # the same windows: 5 ratios x mirror with --tta


@pytest.mark.slow
@pytest.mark.parametrize("tta", [False, True])
def test_m2f_probabilities_bit_for_bit(build, m2f_artifact, m2f_images, tmp_path, tta):
    """Beyond the labels: the summed view probabilities themselves equal runtime/m2f_prediction.py's
    float32 values exactly (every resize, sum, division and exp of the chain), at two strides and batches.
    The C++ runtime sums the graph's `scores` output per window, as infer's `--stitch torch` does (infer's
    default `chunked` stitch rebuilds the scores from the logits, summed in another order: labels equal)."""
    import torch

    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.reference.protocol.images import read_rgb
    from dinov3_deploy.runtime.m2f_prediction import m2f_probabilities
    from dinov3_deploy.runtime.predictor import Predictor

    predictor = Predictor(load_artifact(m2f_artifact), "onnxruntime")
    try:
        for name, stride, batch in (("tall.png", 0, 2), ("sub/rgba.png", 40, 1), ("odd.png", 0, 1)):
            image = read_rgb(m2f_images / name)
            want = m2f_probabilities(predictor, image, 64, stride or None, batch, tta, stitch="torch")[0].numpy()
            _probe(build, "m2f-probs", m2f_artifact, m2f_images / name, 64, stride, batch, int(tta), tmp_path / "p.bin",
                   threads=torch.get_num_threads())
            got = np.fromfile(tmp_path / "p.bin", dtype=np.float32).reshape(want.shape)
            assert (got != want).sum() == 0, f"{name}: {(got != want).sum()} of {got.size} differ"
    finally:
        predictor.close()


@pytest.mark.slow
def test_m2f_window_stride_and_batch_options(build, m2f_artifact, m2f_images, tmp_path):
    c, p = _run_both(build, m2f_artifact, [m2f_images / "tall.png", m2f_images / "sub"], tmp_path, "--tta",
                     "--stride", "40", "--batch-windows", "1")
    assert c.returncode == p.exit_code == 0, c.stderr + p.output
    assert _assert_same_labels(tmp_path / "cpp", tmp_path / "py") == 2


def test_tta_refused_for_a_linear_head(build, tmp_path):
    art = export_tiny(tmp_path, "seg")
    image = tmp_path / "odd.png"
    Image.fromarray(_image(37, 53, 0)).save(image)
    c, p = _run_both(build, art, [image], tmp_path, "--tta")
    assert c.returncode == p.exit_code == 1
    reason = "--tta applies to Mask2Former artifacts (the release's M2F protocol)"
    for out in (tmp_path / "cpp", tmp_path / "py"):
        assert json.loads((out / "predictions.json").read_text())["failures"] == [{"image": "odd.png",
                                                                                   "reason": reason}]

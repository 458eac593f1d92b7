"""The C++ runtime (engines/cpp) held to `dinov3-deploy infer --backend onnxruntime`: built once per
test session (with the TensorRT backend and the AOT Triton stitch, which must compile and link
here although they cannot run), then run side by side with the Python CLI on the same images.

Labels must be identical pixel for pixel, depth within 1e-5 relative, error messages and exit codes
the same. The build needs engines/cpp/install-deps.sh to have run (.ci/run does); without it these
tests skip locally and fail on CI."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import export_tiny
from click.testing import CliRunner
from PIL import Image

from dinov3_deploy.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DEPS = ROOT / ".deps" / "cpp" / "deps.cmake"


def _missing_deps() -> str:
    if not DEPS.exists():
        return f"{DEPS.relative_to(ROOT)} is missing"
    for header in ("/usr/include/stb/stb_image.h", "/usr/include/nlohmann/json.hpp"):
        if not os.path.exists(header):
            return f"{header} is missing"
    if not shutil.which("cmake"):
        return "cmake is not installed"
    return ""


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    return cpp_build(tmp_path_factory)


def cpp_build(tmp_path_factory) -> Path:
    """build/ with dinov3-deploy-cpp, the probe and the example, TensorRT + CUDA stitch compiled in.
    Built once per test session: xdist workers share the folder, the first one builds under a lock."""
    from filelock import FileLock

    missing = _missing_deps()
    if missing:
        reason = f"C++ build dependencies not installed ({missing}): run engines/cpp/install-deps.sh"
        if os.environ.get("CI"):
            pytest.fail(reason + " (.ci/run runs it: on CI these tests must not skip)")
        pytest.skip(reason)
    # the same folder for every xdist worker of this session (their basetemps share a parent); a plain run's
    # parent is shared by every session on the machine, whose builds may come from other checkouts
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "cpp_build"
    with FileLock(str(shared / "cpp_build.lock")):
        if not (out / "built").exists():
            _cmake_build(out)
            (out / "built").write_text("ok")
    return out


def _cmake_build(out: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # -O1: a third of -O2's compile time; the arithmetic is the same (fma explicit, no contraction)
    r = subprocess.run(["cmake", "-S", str(ROOT / "engines" / "cpp"), "-B", str(out), "-DCMAKE_BUILD_TYPE=Tests",
                        "-DCMAKE_CXX_FLAGS=-O1", "-DDINOV3_WITH_TENSORRT=ON", "-DDINOV3_WITH_CUDA=ON"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    r = subprocess.run(["cmake", "--build", str(out), "-j2"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


def _cpp(build: Path, *args, tool: str = "dinov3-deploy-cpp") -> subprocess.CompletedProcess:
    import torch

    # infer runs in this process, where conftest sets torch's thread count; PyTorch's resize of a
    # 3-channel image takes another kernel with one thread, which the C++ side must then take too
    env = {**os.environ, "DINOV3_TORCH_THREADS": str(torch.get_num_threads())}
    return subprocess.run([str(build / tool), *map(str, args)], capture_output=True, text=True, timeout=120, env=env)


def _py_infer(art, inputs, out, *extra):
    return CliRunner().invoke(cli, ["infer", str(art), *map(str, inputs), "-o", str(out), "--backend", "onnxruntime",
                                    *extra])


def _image(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 7 % 256], -1)
    return np.clip(base + rng.integers(-25, 25, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Odd sizes, a grey PNG, an RGBA PNG in a sub-folder, an image smaller than the window, a corrupt file."""
    d = tmp_path_factory.mktemp("cpp_images")
    (d / "sub").mkdir()
    Image.fromarray(_image(37, 53, 0)).save(d / "odd.png")
    Image.fromarray(_image(70, 45, 1)[..., 0]).save(d / "grey.png")
    rgba = np.dstack([_image(50, 81, 2), np.random.default_rng(3).integers(0, 256, (50, 81, 1), dtype=np.uint8)])
    Image.fromarray(rgba).save(d / "sub" / "rgba.png")
    Image.fromarray(_image(131, 97, 4)).save(d / "sub" / "big.png")
    Image.fromarray(_image(21, 30, 5)).save(d / "small.bmp")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return d


def _run_both(build, art, inputs, tmp_path, *extra):
    cpp_out, py_out = tmp_path / "cpp", tmp_path / "py"
    c = _cpp(build, art, *inputs, "-o", cpp_out, *extra)
    p = _py_infer(art, inputs, py_out, *extra)
    return c, p, cpp_out, py_out


def _written(out: Path) -> set[str]:
    return {f.relative_to(out).as_posix() for f in out.rglob("*") if f.is_file()}


def _assert_same_labels(cpp_out: Path, py_out: Path) -> int:
    files = sorted(f.relative_to(py_out) for f in py_out.rglob("*_labels.png"))
    assert files
    for f in files:
        want, got = np.asarray(Image.open(py_out / f)), np.asarray(Image.open(cpp_out / f))
        assert got.shape == want.shape, f
        assert (got != want).sum() == 0, f"{f}: {(got != want).sum()} of {want.size} labels differ"
    return len(files)


def _assert_depth_close(cpp_out: Path, py_out: Path) -> None:
    files = sorted(f.relative_to(py_out) for f in py_out.rglob("*_depth.npy"))
    assert files
    for f in files:
        want, got = np.load(py_out / f), np.load(cpp_out / f)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=0)


# ------------------------------------------------------------------------------------------------
# the parts, each against its Python counterpart
# ------------------------------------------------------------------------------------------------
GEOMETRY_TABLE = [  # h, w, crop (h, w), stride (h, w)
    (64, 64, (64, 64), (42, 42)), (37, 53, (64, 64), (42, 42)), (64, 97, (64, 64), (42, 42)),
    (131, 97, (64, 64), (42, 42)), (512, 683, (512, 512), (341, 341)), (100, 30, (64, 64), (42, 42)),
    (30, 100, (48, 32), (16, 16)), (200, 150, (64, 64), (100, 100)), (65, 65, (64, 64), (1, 1)),
    (1, 1, (16, 16), (16, 16)), (96, 400, (96, 96), (64, 64)), (333, 77, (80, 48), (70, 30)),
]


def test_window_geometry_matches_python(build):
    from dinov3_deploy.reference.protocol.sliding_window import window_geometry

    for h, w, crop, stride in GEOMETRY_TABLE:
        r = _cpp(build, "geometry", h, w, *crop, *stride, tool="dinov3-deploy-probe")
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        g = window_geometry(h, w, crop, stride)
        assert {k: got[k] for k in g.__dataclass_fields__} == g.__dict__, (h, w, crop, stride)
        assert [tuple(x) for x in got["windows"]] == g.windows(), (h, w, crop, stride)


@pytest.mark.parametrize("shape", [(3, 37, 53, 64, 64), (3, 37, 53, 64, 91), (6, 4, 4, 21, 30),
                                   (6, 4, 4, 64, 65), (1, 8, 8, 131, 97), (3, 333, 211, 64, 101)])
def test_resize_is_pytorch_bit_for_bit(build, tmp_path, shape):
    """Both of PyTorch's CPU kernels (out_h + out_w <= 128 and above), images and logits alike."""
    import torch
    import torch.nn.functional as F

    c, h, w, oh, ow = shape
    x = np.random.default_rng(sum(shape)).standard_normal((2, c, h, w)).astype(np.float32) * 40
    x.tofile(tmp_path / "in.bin")
    r = _cpp(build, "resize", tmp_path / "in.bin", 2, c, h, w, oh, ow, tmp_path / "out.bin", tool="dinov3-deploy-probe")
    assert r.returncode == 0, r.stderr
    got = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(2, c, oh, ow)
    want = F.interpolate(torch.from_numpy(x), size=(oh, ow), mode="bilinear", align_corners=False).numpy()
    assert (got != want).sum() == 0, f"{(got != want).sum()} values differ, max {np.abs(got - want).max()}"


def test_stitch_matches_slide_inference(build, tmp_path):
    import torch

    from dinov3_deploy.reference.protocol.sliding_window import slide_inference, window_geometry

    H, W, crop, stride, C, lh = 70, 101, 48, 32, 5, 3
    g = window_geometry(H, W, crop, stride)
    logits = np.random.default_rng(0).standard_normal((len(g), C, lh, lh)).astype(np.float32)
    logits.tofile(tmp_path / "logits.bin")
    for out_h, out_w in ((H, W), (47, 67)):
        r = _cpp(build, "stitch", tmp_path / "logits.bin", C, lh, lh, H, W, crop, stride, out_h, out_w,
                 tmp_path / "labels.bin", tool="dinov3-deploy-probe")
        assert r.returncode == 0, r.stderr
        got = np.fromfile(tmp_path / "labels.bin", dtype=np.int32).reshape(out_h, out_w)
        full = slide_inference(lambda crops: torch.from_numpy(logits), torch.zeros(1, 3, H, W), C, crop, stride,
                               out_size=(out_h, out_w), batch_size=len(g))
        assert (got != full.argmax(1)[0].numpy()).sum() == 0


def test_sha256_matches_hashlib(build, tmp_path):
    import hashlib

    data = np.random.default_rng(1).integers(0, 256, 200_003, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(data)
    r = _cpp(build, "sha256", tmp_path / "f.bin", tool="dinov3-deploy-probe")
    assert r.stdout.strip() == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------
# the manifest: the same refusals, in the same words
# ------------------------------------------------------------------------------------------------
def _python_error(args) -> str:
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    return res.output.strip()


def _both_refuse(build, art, images, tmp_path) -> str:
    c = _cpp(build, art, images / "odd.png", "-o", tmp_path / "c")
    py = _python_error(["infer", str(art), str(images / "odd.png"), "-o", str(tmp_path / "p"), "--backend",
                        "onnxruntime"])
    assert c.returncode == 2
    assert c.stderr.strip() == py
    return py


def test_manifest_refusals_match_python(build, images, tmp_path):
    art = export_tiny(tmp_path, "seg")
    manifest = json.loads((art / "manifest.json").read_text())
    (art / "parity.json").write_text((art / "parity.json").read_text().replace("}", " }"))
    msg = _both_refuse(build, art, images, tmp_path / "a")
    assert "does not match its sha256" in msg

    for version, words in ((manifest["schema_version"] + 1, "newer than the version"), (1, "older than")):
        (art / "manifest.json").write_text(json.dumps({**manifest, "schema_version": version}))
        assert words in _both_refuse(build, art, images, tmp_path / f"v{version}")
    (art / "manifest.json").write_text(json.dumps({**manifest, "schema": "something-else"}))
    assert "is not a dinov3-deploy-artifact manifest" in _both_refuse(build, art, images, tmp_path / "s")
    assert "is not an artifact directory" in _both_refuse(build, tmp_path / "nowhere", images, tmp_path / "n")


def test_usage_errors_match_python(build, images, tmp_path):
    art = export_tiny(tmp_path, "seg")
    c = _cpp(build, art, images / "odd.png", "-o", tmp_path / "c", "--window", "40")
    py = _python_error(["infer", str(art), str(images / "odd.png"), "-o", str(tmp_path / "p"), "--window", "40"])
    assert c.returncode == 2 and c.stderr.strip() == py
    out = tmp_path / "out"
    assert _cpp(build, art, images / "odd.png", "-o", out).returncode == 0
    c = _cpp(build, art, images / "odd.png", "-o", out)  # a second run would replace its files
    py = _python_error(["infer", str(art), str(images / "odd.png"), "-o", str(out), "--backend", "onnxruntime"])
    assert c.returncode == 2 and c.stderr.strip() == py
    c = _cpp(build, art, tmp_path / "missing.png", "-o", tmp_path / "m")
    assert c.returncode == 2 and c.stderr.strip() == f"error: no such image or folder: {tmp_path / 'missing.png'}"


def test_tensorrt_backend_and_cuda_stitch_are_built(build, tmp_path, images):
    """Compiled and linked here (the build fixture fails otherwise); they cannot run without a GPU."""
    art = export_tiny(tmp_path, "seg")
    c = _cpp(build, art, images / "odd.png", "-o", tmp_path / "o", "--backend", "tensorrt")
    assert c.returncode == 2
    assert "has no TensorRT engine" in c.stderr  # the TensorRT path ran, not the "built without" stand-in
    assert (build / "stitch_aot" / "dinov3_stitch_resize.c").exists()  # generated by triton.tools.compile
    assert "cubin" in (build / "stitch_aot" / "dinov3_stitch_resize.c").read_text()[:4000]


# ------------------------------------------------------------------------------------------------
# dinov3-deploy-cpp against dinov3-deploy infer
# ------------------------------------------------------------------------------------------------
def test_seg_fp32_labels_identical(build, images, tmp_path):
    art = export_tiny(tmp_path, "seg")
    c, p, cpp_out, py_out = _run_both(build, art, [images], tmp_path)
    assert c.returncode == p.exit_code == 1, c.stderr  # the corrupt file fails, the others are written
    assert "failed: corrupt.png: cannot read image" in c.stderr
    assert _written(cpp_out) == _written(py_out)  # the same names, NAME_labels.png and NAME_seg.png
    assert _assert_same_labels(cpp_out, py_out) == 5
    report = json.loads((cpp_out / "predictions.json").read_text())
    assert [f["image"] for f in report["failures"]] == ["corrupt.png"]
    want = json.loads((py_out / "predictions.json").read_text())
    assert [p["image"] for p in report["predictions"]] == [p["image"] for p in want["predictions"]]
    assert [p["classes"] for p in report["predictions"]] == [p["classes"] for p in want["predictions"]]


def test_seg_window_and_stride_options(build, images, tmp_path):
    art = export_tiny(tmp_path, "seg")
    c, p, cpp_out, py_out = _run_both(build, art, [images / "sub"], tmp_path, "--window", "48", "--stride", "20")
    assert c.returncode == p.exit_code == 0, c.stderr
    assert _assert_same_labels(cpp_out, py_out) == 2


def test_seg_fp16_uint8_input_labels_identical(build, images, tmp_path):
    art = export_tiny(tmp_path, "seg", "--precision", "fp16", "--uint8-input")
    c, p, cpp_out, py_out = _run_both(build, art, [images / "odd.png", images / "sub"], tmp_path)
    assert c.returncode == p.exit_code == 0, c.stderr
    assert _assert_same_labels(cpp_out, py_out) == 3


def test_multi_head_labels_and_depth(build, images, tmp_path):
    art = export_tiny(tmp_path, "seg,depth")
    c, p, cpp_out, py_out = _run_both(build, art, [images / "odd.png", images / "grey.png", images / "sub"], tmp_path)
    assert c.returncode == p.exit_code == 0, c.stderr
    assert _written(cpp_out) == _written(py_out)
    assert _assert_same_labels(cpp_out, py_out) == 4
    _assert_depth_close(cpp_out, py_out)


def test_depth_within_1e5(build, images, tmp_path):
    art = export_tiny(tmp_path, "depth")
    c, p, cpp_out, py_out = _run_both(build, art, [images / "odd.png", images / "sub" / "big.png"], tmp_path)
    assert c.returncode == p.exit_code == 0, c.stderr
    assert _written(cpp_out) == _written(py_out)
    _assert_depth_close(cpp_out, py_out)


def test_features_patch_tokens(build, images, tmp_path):
    art = export_tiny(tmp_path, "features")
    c, p, cpp_out, py_out = _run_both(build, art, [images / "odd.png"], tmp_path)
    assert c.returncode == p.exit_code == 0, c.stderr
    assert _written(cpp_out) == _written(py_out)
    want, got = np.load(py_out / "odd.png_patch_tokens.npy"), np.load(cpp_out / "odd.png_patch_tokens.npy")
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_jpeg_rule(build, tmp_path):
    """stb_image and PIL (libjpeg) may decode a JPEG a level or two apart. The rule: the C++ labels
    of a JPEG are infer's labels of the pixels stb decodes (here: saved losslessly as a PNG), and the
    two decoders stay within a few levels. EXIF orientation is applied as PIL's exif_transpose does."""
    art = export_tiny(tmp_path, "seg")
    src = tmp_path / "jpg"
    src.mkdir()
    im = Image.fromarray(_image(45, 70, 7))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees clockwise
    im.save(src / "photo.jpg", quality=90, exif=exif.tobytes())
    decoded = tmp_path / "decoded"
    decoded.mkdir()
    r = _cpp(build, "decode", src / "photo.jpg", decoded / "photo.jpg.png", tool="dinov3-deploy-probe")
    assert r.returncode == 0, r.stderr
    from dinov3_deploy.reference.protocol.images import read_rgb

    ours, pil = np.asarray(Image.open(decoded / "photo.jpg.png")), read_rgb(src / "photo.jpg")
    assert ours.shape == pil.shape == (70, 45, 3)  # upright
    assert np.abs(ours.astype(int) - pil).max() <= 8
    c = _cpp(build, art, src, "-o", tmp_path / "cpp")
    p = _py_infer(art, [decoded], tmp_path / "py")
    assert c.returncode == p.exit_code == 0, c.stderr
    want = np.asarray(Image.open(tmp_path / "py" / "photo.jpg.png_labels.png"))
    got = np.asarray(Image.open(tmp_path / "cpp" / "photo.jpg_labels.png"))
    assert (got != want).sum() == 0


def test_library_example_runs(build, images, tmp_path):
    art = export_tiny(tmp_path, "seg")
    r = _cpp(build, art, images / "odd.png", tool="dinov3-deploy-example")
    assert r.returncode == 0, r.stderr
    counts = dict(line.split(": ") for line in r.stdout.strip().splitlines())
    assert sum(int(v.split()[0]) for v in counts.values()) == 37 * 53

"""`infer` on real folders loses nothing: distinct outputs for every input, one bad image does
not cost the others their results, nothing is replaced without --overwrite, and the pictures say
what their colours mean."""

import json

import numpy as np
import pytest
from cli_helpers import export_tiny as _export
from click.testing import CliRunner
from PIL import Image

from dinov3_deploy.cli import cli
from dinov3_deploy.reference.protocol.synthetic import make_sample


@pytest.fixture(scope="module")
def seg_artifact(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("seg"), "seg")


def _infer(*args):
    return CliRunner().invoke(cli, ["infer", *map(str, args)])


def _save(path, seed, h, w):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_sample(seed, h, w)[0]).save(path)


def test_same_stem_and_subfolders_get_distinct_outputs(seg_artifact, tmp_path):
    imgs = tmp_path / "imgs"
    sizes = {"a.jpg": (40, 56), "a.png": (48, 72), "sub/a.jpg": (36, 80)}
    for seed, (name, (h, w)) in enumerate(sizes.items()):
        _save(imgs / name, seed, h, w)
    out = tmp_path / "out"
    res = _infer(seg_artifact, imgs, "-o", out)
    assert res.exit_code == 0, res.output
    for name, shape in sizes.items():  # each labels file belongs to its own image (sizes differ)
        assert np.asarray(Image.open(out / f"{name}_labels.png")).shape == shape
        assert (out / f"{name}_seg.png").is_file()
    listed = json.loads((out / "predictions.json").read_text())
    assert sorted(p["image"] for p in listed["predictions"]) == sorted(sizes)
    assert listed["summary"]["images_ok"] == 3 and listed["summary"]["windows_run"] >= 3


def test_inputs_that_would_share_outputs_are_refused_up_front(seg_artifact, tmp_path):
    for folder in ("x", "y"):
        _save(tmp_path / folder / "a.png", 0, 40, 40)
    res = _infer(seg_artifact, tmp_path / "x", tmp_path / "y", "-o", tmp_path / "out")
    assert res.exit_code == 2 and "same outputs" in res.output and "a.png" in res.output
    assert not (tmp_path / "out").exists()
    # The same file reached twice is one input, not a clash.
    res = _infer(seg_artifact, tmp_path / "x", tmp_path / "x" / "a.png", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"]) == 1


def test_a_corrupt_image_is_reported_and_the_others_finish(seg_artifact, tmp_path):
    imgs = tmp_path / "imgs"
    _save(imgs / "good1.png", 1, 40, 56)
    (imgs / "broken.png").write_bytes(b"not a png at all")
    _save(imgs / "good2.jpg", 2, 44, 60)
    out = tmp_path / "out"
    res = _infer(seg_artifact, imgs, "-o", out)
    assert res.exit_code == 1, res.output  # 1: some images failed (2 is for usage errors)
    assert "broken.png" in res.output and "1 failed" in res.output
    assert (out / "good1.png_seg.png").is_file() and (out / "good2.jpg_seg.png").is_file()
    assert not list(out.glob("broken*"))
    listed = json.loads((out / "predictions.json").read_text())
    assert [p["image"] for p in listed["predictions"]] == ["good1.png", "good2.jpg"]
    assert [f["image"] for f in listed["failures"]] == ["broken.png"]
    assert "cannot read image" in listed["failures"][0]["reason"]
    assert listed["summary"]["images_failed"] == 1


def test_existing_outputs_need_overwrite_and_only_ours_are_replaced(seg_artifact, tmp_path):
    _save(tmp_path / "imgs" / "a.png", 3, 40, 56)
    out = tmp_path / "out"
    assert _infer(seg_artifact, tmp_path / "imgs", "-o", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    (out / "a.png_seg.png").write_bytes(b"stale")
    res = _infer(seg_artifact, tmp_path / "imgs", "-o", out)
    assert res.exit_code == 2 and "--overwrite" in res.output and "a.png_labels.png" in res.output
    assert (out / "a.png_seg.png").read_bytes() == b"stale"  # refused before anything was written
    res = _infer(seg_artifact, tmp_path / "imgs", "-o", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert Image.open(out / "a.png_seg.png").format == "PNG"
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_seg_panel_has_a_legend_of_the_classes_present(seg_artifact, tmp_path):
    from dinov3_deploy.artifact import load_artifact
    from dinov3_deploy.reference.training.visualize import MIN_PICTURE_WIDTH, SEG_TITLES, title_strip

    _save(tmp_path / "imgs" / "a.png", 4, 48, 64)
    out = tmp_path / "out"
    assert _infer(seg_artifact, tmp_path / "imgs", "-o", out).exit_code == 0
    labels = np.asarray(Image.open(out / "a.png_labels.png"))
    panel = np.asarray(Image.open(out / "a.png_seg.png").convert("RGB"))
    # titles | image, overlay, mask (scaled up by a whole factor to a readable width) | legend
    k = panel.shape[1] // (3 * 64)
    assert panel.shape[1] == 3 * 64 * k >= MIN_PICTURE_WIDTH
    top = title_strip(panel.shape[1], SEG_TITLES).shape[0]
    assert panel.shape[0] > top + 48 * k
    legend = panel[top + 48 * k:].reshape(-1, 3)
    palette = load_artifact(seg_artifact).manifest.classes.palette
    colours = {tuple(c) for c in legend.tolist()}
    for cls in np.unique(labels):
        assert tuple(palette[cls]) in colours, f"no swatch for class {cls}"


def test_cls_prints_the_top5_with_class_names(tmp_path):
    import torch

    from dinov3_deploy.reference.factory import build_task_model, random_backbone
    from dinov3_deploy.reference.head_checkpoint import save_head_checkpoint

    names = ["heron", "otter", "lichen", "basalt", "kelp", "marten", "sedge"]
    torch.manual_seed(0)
    tm = build_task_model("cls", random_backbone("vit_tiny_test", 1), n_classes=len(names), class_names=names)
    head = save_head_checkpoint(tmp_path / "head", tm, backbone_seed=1)
    art = _export(tmp_path, "cls", "--head", str(head))
    res = _infer(art, "--demo", "1", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    top5 = json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"][0]["top5"]
    assert len(top5) == 5 and all(entry["class"] in names for entry in top5)
    shown = [line for line in res.output.splitlines() if any(n in line for n in names)]
    assert [next(n for n in names if n in line) for line in shown] == [entry["class"] for entry in top5]


def test_a_folder_of_real_world_formats_keeps_each_image_in_its_own_orientation(seg_artifact, tmp_path):
    """Grayscale JPEG, RGBA PNG, 16-bit PNG and an EXIF-rotated JPEG are all predicted (each label map
    the size of the image as displayed), the broken file is named, and the status says one failed."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rgb = make_sample(3, 48, 80)[0]
    Image.fromarray(rgb).convert("L").save(imgs / "gray.jpg")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(imgs / "alpha.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(imgs / "deep.png")  # 16-bit grayscale
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(rgb).save(imgs / "rotated.jpg", exif=exif)
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "out"
    res = _infer(seg_artifact, imgs, "-o", out)
    assert res.exit_code == 1, res.output
    assert "broken.jpg" in res.output
    shapes = {name: np.asarray(Image.open(out / f"{name}_labels.png")).shape
              for name in ("gray.jpg", "alpha.png", "deep.png", "rotated.jpg")}
    assert shapes == {"gray.jpg": (48, 80), "alpha.png": (48, 80), "deep.png": (48, 80), "rotated.jpg": (80, 48)}
    failures = json.loads((out / "predictions.json").read_text())["failures"]
    assert [f["image"] for f in failures] == ["broken.jpg"]

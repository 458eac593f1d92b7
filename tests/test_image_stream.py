"""`infer`'s input pipeline (runtime/inference.py `image_stream`): decode in threads, pinned memory and a
host-to-device copy on a side stream on a GPU, issued one image ahead so image i+1 crosses PCIe while
image i computes. On the CPU nothing changes: the same numpy images and the same predictions as the
plain path. The GPU ordering rules are checked here with stand-in streams and events that record what
is enqueued (there is no GPU on the CI machines), and for real in the GPU-marked test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_helpers import export_tiny as _export
from PIL import Image

from dinov3_deploy.artifact import load_artifact
from dinov3_deploy.reference.protocol.images import read_rgb
from dinov3_deploy.reference.protocol.synthetic import make_sample
from dinov3_deploy.runtime import inference
from dinov3_deploy.runtime.inference import ImageInput, image_stream, list_images, predict_image, to_device_ahead
from dinov3_deploy.runtime.predictor import Predictor


@pytest.fixture(scope="module")
def seg_artifact(tmp_path_factory):
    return load_artifact(_export(tmp_path_factory.mktemp("seg"), "seg"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    imgs = tmp_path_factory.mktemp("imgs")
    for i, (h, w) in enumerate(((40, 90), (64, 64), (24, 30))):
        Image.fromarray(make_sample(i, h, w)[0]).save(imgs / f"{i}.png")
    Image.fromarray(make_sample(3, 40, 40)[0]).save(imgs / "3.jpg")
    (imgs / "broken.png").write_bytes(b"not a png")
    return imgs


def test_the_cpu_path_is_unchanged(seg_artifact, folder):
    """Same images, same order, failures in place, no device copy, and predictions equal to the plain path."""
    inputs = list_images([folder])
    predictor = Predictor(seg_artifact, "onnxruntime")
    streamed = list(image_stream(inputs, predictor.device))
    assert [item.name for item, _, _ in streamed] == [i.name for i in inputs]
    for item, image, device_image in streamed:
        assert device_image is None
        if item.name == "broken.png":
            assert isinstance(image, Exception) and "broken.png" in str(image)
            continue
        np.testing.assert_array_equal(image, read_rgb(item.source))
        got = predict_image(predictor, item.name, image, batch_windows=2, device_image=device_image)
        plain = predict_image(predictor, item.name, read_rgb(item.source), batch_windows=2)
        assert len(np.unique(plain.labels)) > 1
        np.testing.assert_array_equal(got.labels, plain.labels)


class _Stream:
    def __init__(self, log: list, label: str) -> None:
        self.log, self.label = log, label

    def wait_event(self, event) -> None:
        self.log.append(("wait", self.label, event.name))


class _Event:
    count = 0

    def __init__(self, log: list) -> None:
        self.log = log
        _Event.count += 1
        self.name = f"copied{_Event.count}"

    def record(self, stream) -> None:
        self.log.append(("record", stream.label, self.name))


class _DeviceCopy:
    def __init__(self, log: list, name: str) -> None:
        self.log, self.name = log, name

    def record_stream(self, stream) -> None:
        self.log.append(("record_stream", self.name, stream.label))


class _PinnedHost:
    """Stands in for a pinned uint8 image: `.to(cuda, non_blocking=True)` is logged with the current stream."""

    def __init__(self, log: list, name: str, current: list) -> None:
        self.log, self.name, self.current = log, name, current

    def to(self, device, non_blocking=False):
        assert non_blocking and device.type == "cuda"
        self.log.append(("copy", self.name, self.current[-1].label))
        return _DeviceCopy(self.log, self.name)

    def numpy(self):
        return np.zeros((2, 2, 3), np.uint8)


def test_on_a_gpu_the_next_copy_is_issued_before_the_current_image_is_handed_over(monkeypatch):
    """The ordering rules of `to_device_ahead` with logging stand-ins for the CUDA stream, event and tensors:
    copy on the side stream, event recorded there; the consumer's stream waits on the event and is recorded
    on the device copy before the image is handed over; copy i+1 is enqueued before image i is handed over."""
    log: list = []
    consumer, current = _Stream(log, "compute"), []
    current.append(consumer)

    class _StreamContext:
        def __init__(self, stream) -> None:
            self.stream = stream

        def __enter__(self):
            current.append(self.stream)

        def __exit__(self, *exc):
            current.pop()

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _Stream(log, "copier"))
    monkeypatch.setattr(torch.cuda, "stream", _StreamContext)
    monkeypatch.setattr(torch.cuda, "Event", lambda: _Event(log))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[-1])
    _Event.count = 0
    items = [ImageInput(f"{i}.png", np.zeros(1)) for i in range(3)]
    failure = OSError("broken")
    images = [(items[0], _PinnedHost(log, "0", current)), (items[1], _PinnedHost(log, "1", current)),
              (items[2], failure)]

    out = []
    for item, image, dev in to_device_ahead(iter(images), torch.device("cuda")):
        log.append(("handed", item.name))
        out.append((item, image, dev))
    assert log == [
        ("copy", "0", "copier"), ("record", "copier", "copied1"),
        ("copy", "1", "copier"), ("record", "copier", "copied2"),  # before image 0 is handed over
        ("wait", "compute", "copied1"), ("record_stream", "0", "compute"), ("handed", "0.png"),
        ("wait", "compute", "copied2"), ("record_stream", "1", "compute"), ("handed", "1.png"),
        ("handed", "2.png"),  # failed to decode: nothing to copy or wait for
    ]
    assert out[2][1] is failure and out[2][2] is None
    assert isinstance(out[0][1], np.ndarray) and out[0][2].name == "0"


def test_decoded_pins_only_when_asked(folder, monkeypatch):
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(tuple(self.shape)) or self)
    inputs = list_images([folder])
    assert all(not isinstance(img, torch.Tensor) for _, img in inference.decoded(inputs))
    assert not pinned
    got = dict(inference.decoded(inputs, pin=True))
    assert len(pinned) == 4  # every image that decodes; the broken one stays an exception
    assert all(isinstance(got[i], torch.Tensor) for i in inputs if i.name != "broken.png")


@pytest.mark.gpu
def test_pinned_overlapped_copies_give_the_plain_paths_predictions(seg_artifact, folder):
    inputs = [i for i in list_images([folder]) if i.name != "broken.png"]
    predictor = Predictor(seg_artifact, "torch", precision="fp32", attn_impl="sdpa")
    for item, image, device_image in image_stream(inputs, predictor.device):
        assert device_image.is_cuda and image.base is not None  # a view of the pinned tensor, kept alive
        got = predict_image(predictor, item.name, image, batch_windows=2, device_image=device_image)
        plain = predict_image(predictor, item.name, read_rgb(item.source), batch_windows=2)
        np.testing.assert_array_equal(got.labels, plain.labels)

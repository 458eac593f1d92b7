"""Keeping the device busy across a stream of images: decoding in background threads (into pinned
memory on a GPU) and each image's host-to-device copy issued one image ahead of the compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .discovery import ImageInput


def to_device(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """The plain host-to-device path: uint8 HxWx3 numpy -> the same tensor on `device`, on the current
    stream (`to_device_ahead` is the overlapped one, for a stream of images)."""
    return host_tensor(image).to(device)



def host_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(image, requirements=("C", "W")))  # copies only a read-only array



def decoded(inputs: list[ImageInput], workers: int = 2, ahead: int = 4, pin: bool = False):
    """(input, uint8 HxWx3 image or the exception reading it raised) for each input, in order, decoded
    by a background thread pool up to `ahead` images in advance, so the device is not idle while a
    JPEG is decoded (PIL and numpy release the GIL while they decode and convert).

    pin: the workers also copy each image into page-locked host memory and hand over that torch tensor
    (not numpy), so its copy to the GPU can be asynchronous (`to_device_ahead`); pageable memory would make
    the copy wait for the host."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from dinov3_deploy.reference.protocol.images import read_rgb

    def read(item: ImageInput):
        try:
            image = read_rgb(item.source) if isinstance(item.source, Path) else item.source
            return host_tensor(image).pin_memory() if pin else image
        except Exception as exc:  # noqa: BLE001 - handed to the caller, which reports it and goes on
            return exc

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        pending: deque = deque()
        for item in inputs:
            pending.append((item, pool.submit(read, item)))
            if len(pending) > ahead:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()



def to_device_ahead(images, device: torch.device, ahead: int = 1):
    """(input, image as numpy or the exception reading it, the image on `device` or None) for each
    (input, image) of `images` (`decoded`). On the CPU the third item is None: `predict_image` takes the
    numpy image as before. On a GPU, each image's copy runs on a side stream, issued `ahead` images
    before the caller gets that image, so image i+1 crosses PCIe while image i computes.

    Order and lifetime on a GPU: the caller's stream waits on the copy's event before the image is
    handed over (work it then enqueues comes after the copy); `record_stream` tells the caching
    allocator that the caller's stream uses the device copy, so its memory, allocated on the side
    stream, is not reused before that work is done; the pinned host tensor is copied from as itself (the
    host allocator then records the copy and keeps the block until it is done) and stays referenced by
    the numpy image returned."""
    if device.type != "cuda":
        for item, image in images:
            yield item, image, None
        return
    from collections import deque

    copier = torch.cuda.Stream(device)
    pending: deque = deque()

    def start(item, image):
        if isinstance(image, Exception):
            return item, image, None, None
        host = host_tensor(image) if isinstance(image, np.ndarray) else image  # else pinned by `decoded`
        with torch.cuda.stream(copier):
            dev = host.to(device, non_blocking=True)  # asynchronous only from pinned memory
            done = torch.cuda.Event()
            done.record(copier)
        return item, host.numpy(), dev, done

    def finish(item, image, dev, done):
        if dev is not None:
            consumer = torch.cuda.current_stream(device)
            consumer.wait_event(done)
            dev.record_stream(consumer)
        return item, image, dev

    for item, image in images:
        pending.append(start(item, image))
        if len(pending) > ahead:
            yield finish(*pending.popleft())
    while pending:
        yield finish(*pending.popleft())



def image_stream(inputs: list[ImageInput], device: torch.device, workers: int = 2, ahead: int = 4):
    """`infer`'s input pipeline: decoded in the background (into pinned memory on a GPU) and copied to
    `device` one image ahead of the compute; yields (input, numpy image or exception, device image or None)."""
    return to_device_ahead(decoded(inputs, workers, ahead, pin=device.type == "cuda"), device)

"""Sliding-window stitch kernel vs reference.sliding_window.slide_inference (the official semantics)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import

from dinov3_deploy.kernels.stitch import stitch, stitch_grid, stitch_into  # noqa: E402
from dinov3_deploy.reference.protocol.sliding_window import slide_inference, window_grid  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def reference_logits(logits, image_size, crop, stride, out_size):
    """Feed the per-window logits through the reference slide_inference, window by window."""
    it = iter(logits)
    fn = lambda crops: torch.stack([next(it) for _ in range(crops.shape[0])])
    image = torch.zeros(1, 3, *image_size, device=logits.device)
    return slide_inference(fn, image, logits.shape[1], crop, stride, out_size)[0]


def check(H, W, crop, stride, out_size, C, low, dtype=torch.float32):
    n = len(window_grid(H, W, crop, stride))
    logits = torch.randn(n, C, *low, device=DEV).to(dtype)
    ref = reference_logits(logits.float(), (H, W), crop, stride, out_size)  # [C, OH, OW] fp32
    OH, OW = ref.shape[-2:]
    labels = torch.full((OH, OW), -7, dtype=torch.int64, device=DEV)  # poisoned
    probs = torch.full((C, OH, OW), float("nan"), device=DEV)
    stitch_into(logits, (H, W), crop, stride, labels, probs)
    tol = 2e-6 if DEV == "cpu" else 1e-5  # fused multiply-adds on the GPU
    torch.testing.assert_close(probs, ref.softmax(0), atol=tol, rtol=1e-5)
    # argmax agrees wherever the reference's top two classes are not a rounding error apart
    top2 = ref.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-4
    assert clear.float().mean() > 0.95
    assert torch.equal(labels[clear], ref.argmax(0)[clear])
    assert labels.min() >= 0 and labels.max() < C


@pytest.mark.parametrize(
    "H,W,crop,stride,out_size,C,low",
    [
        (20, 30, 12, 8, None, 5, (3, 3)),  # 2x3 overlapping windows, no final resize
        (20, 30, 12, 8, (15, 23), 5, (3, 3)),  # final bilinear resize to a smaller label size
        (10, 33, 16, (6, 10), (13, 40), 7, (2, 4)),  # crop taller than the image: one row of windows
        (9, 14, 32, 8, None, 3, (2, 2)),  # crop larger than both sides: crop = shorter side
    ],
)
def test_stitch_matches_slide_inference(H, W, crop, stride, out_size, C, low):
    check(H, W, crop, stride, out_size, C, low)


def test_stitch_half_precision_logits():
    check(16, 20, 10, 6, None, 4, (2, 2), dtype=torch.float16)


def test_stitch_custom_op_fake_and_labels_only():
    n = len(window_grid(12, 16, 8, 6))
    logits = torch.randn(n, 3, 2, 2, device=DEV)
    labels, probs = stitch(logits, 12, 16, 8, 8, 6, 6, 12, 16, False)
    assert probs.numel() == 0 and labels.dtype == torch.int64
    assert torch.equal(labels, reference_logits(logits, (12, 16), 8, 6, None).argmax(0))
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fl, fp = torch.ops.dinov3_deploy.stitch(mode.from_tensor(logits), 12, 16, 8, 8, 6, 6, 30, 40, True)
    assert fl.shape == (30, 40) and fp.shape == (3, 30, 40)


def test_stitch_rejects_wrong_window_count():
    with pytest.raises(ValueError, match="windows"):
        stitch_into(torch.randn(3, 2, 2, 2, device=DEV), (12, 16), 8, 6,
                    torch.empty(12, 16, dtype=torch.int64, device=DEV))  # labels beside the logits: a GPU too


def test_stitch_grid_keeps_rows_off_the_65535_axis():
    """CUDA caps grid axes y and z at 65535: a tall label map must put its rows on axis x."""
    rows, col_blocks = stitch_grid(70_000, 300, 128)
    assert (rows, col_blocks) == (70_000, 3) and col_blocks <= 65535


def test_stitch_rows_follow_program_axis_0():
    """Rows come from axis 0 of the grid the launcher builds (a tall, narrow map in the
    interpreter: each row's labels must be its own, not another row's)."""
    H, W, crop, stride = 40, 6, 6, 4
    n = len(window_grid(H, W, crop, stride))
    logits = torch.randn(n, 3, 2, 2, device=DEV)
    labels = torch.full((H, W), -1, dtype=torch.int64, device=DEV)
    stitch_into(logits, (H, W), crop, stride, labels)
    assert torch.equal(labels, reference_logits(logits, (H, W), crop, stride, None).argmax(0))


@pytest.mark.gpu
@pytest.mark.parametrize("H,W,out_size", [(512, 683, None), (1024, 2048, None), (512, 683, (480, 640))])
def test_stitch_gpu_real_sizes(H, W, out_size):
    check(H, W, 512, 341, out_size, 150, (32, 32))


def test_bench_stitch_check_ignores_rounding_ties_but_not_real_flips():
    """The bench's stitch parity row (the labels+probabilities variant failed on one pixel of 2M
    whose top two classes were a rounding error apart): ties within TIE_MARGIN are left out of the
    100 % fp32 label gate, a label flipped where the margin is clear still fails it."""
    from dinov3_deploy.bench.kernels_bench import TIE_MARGIN, stitch_check

    scores = torch.randn(4, 6, 8)
    scores[1, 0, 0] = scores[:, 0, 0].max() + TIE_MARGIN / 10  # pixel (0, 0): a near-tie between two classes
    check = stitch_check(scores, "case")
    labels = scores.argmax(0)
    runner_up = scores[:, 0, 0].topk(2).indices[1]
    tie_flip = labels.clone()
    tie_flip[0, 0] = runner_up
    assert check(labels)[0].passed and check(tie_flip)[0].passed
    scores[:, 3, 3] = torch.tensor([5.0, 0.0, 0.0, 0.0])  # pixel (3, 3): class 0 by a clear margin
    check = stitch_check(scores, "case")
    real_flip = scores.argmax(0)
    real_flip[3, 3] = 1
    assert check(scores.argmax(0))[0].passed and not check(real_flip)[0].passed

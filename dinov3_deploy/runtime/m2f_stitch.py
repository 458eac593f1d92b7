"""The chunked Mask2Former stitch: a view's summed window scores accumulated straight from the windows'
class and mask logits, never a window's semantic scores at full resolution for every class.

The release's semantic scores of a window (reference/models/m2f_segmentor.semantic_scores) are
    scores[c, y, x] = sum_q softmax(class_logits)[q, c] * sigmoid(up(mask_logits)[q, y, x])
with up() the bilinear upsampling (align_corners=False) of the stride-4 mask logits to the window
size. The sliding window (sliding_window.slide_inference) adds each window's scores into a canvas of
the view, divides by the window count per pixel and resizes to the image. At 896 x 896 with 150
classes one window's scores are 482 MB in fp32 (the upsampled masks of 100 queries 321 MB more), and
the reference makes a second copy when it "resizes" them to the window size.

Here a window is added into the canvas one query chunk and one class chunk at a time: the
upsampled, sigmoid-ed masks of `q_chunk` queries [q_chunk, h, w], times their class probabilities
[q_chunk, c_chunk], added into the canvas's class rows. The upsampling works per channel, so each
query's mask is the reference's to the bit; only the order of the sum over queries differs (float
rounding, ~1e-7 relative), which leaves the labels those of the reference protocol.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinov3_deploy.reference.protocol.sliding_window import WindowGeometry

#: Queries and classes per step. At 896 x 896: 50 masks (160 MB) and a 32-class partial sum (103 MB): on the
#: 2-core VM as fast as the scores path (16 queries: 2x slower for 50 MB less; bench/m2f_stitch_memory.py).
Q_CHUNK = 50
C_CHUNK = 32


def m2f_canvas(geometry: WindowGeometry, n_classes: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(zero canvas [1, C, H, W] fp32, per-pixel window count [1, 1, H, W]) of a view."""
    H, W = geometry.image_h, geometry.image_w
    count = torch.zeros(1, 1, H, W, dtype=torch.float32, device=device)
    for y0, y1, x0, x1 in geometry.windows():
        count[..., y0:y1, x0:x1] += 1
    return torch.zeros(1, n_classes, H, W, dtype=torch.float32, device=device), count


@torch.no_grad()
def add_windows(canvas: torch.Tensor, class_logits: torch.Tensor, mask_logits: torch.Tensor, windows: list,
                *, q_chunk: int = Q_CHUNK, c_chunk: int = C_CHUNK) -> None:
    """Add the scores of `windows` ((y0, y1, x0, x1) each) into `canvas` [1, C, H, W] from their class
    logits [b, Q, C+1] and stride-4 mask logits [b, Q, h, w], in query and class chunks."""
    n_queries, n_classes = mask_logits.shape[1], canvas.shape[1]
    for k, (y0, y1, x0, x1) in enumerate(windows):
        probs = class_logits[k].float().softmax(-1)[:, :n_classes]  # [Q, C]: the "no object" class dropped
        region = canvas[0, :, y0:y1, x0:x1]
        for q0 in range(0, n_queries, q_chunk):
            q1 = min(q0 + q_chunk, n_queries)
            masks = F.interpolate(mask_logits[k:k + 1, q0:q1].float(), size=(y1 - y0, x1 - x0), mode="bilinear",
                                  align_corners=False)[0].sigmoid_()  # [q, h, w]
            flat = masks.flatten(1)
            for c0 in range(0, n_classes, c_chunk):
                c1 = min(c0 + c_chunk, n_classes)
                region[c0:c1] += (probs[q0:q1, c0:c1].T @ flat).view(c1 - c0, y1 - y0, x1 - x0)
            del masks, flat


def finish_view(canvas: torch.Tensor, count: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """The view's mean window scores resized to `out_size` (bilinear, align_corners=False), as the
    reference slide_inference ends; the canvas is divided in place."""
    out = canvas.div_(count)
    if tuple(out_size) != tuple(out.shape[-2:]):
        out = F.interpolate(out, size=tuple(out_size), mode="bilinear", align_corners=False)
    return out

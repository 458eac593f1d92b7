"""Benchmark of the performance core (Triton kernels and the models that use them) on one GPU.

The cases live here; timing, rows, environment and the report are the shared ones (timing.py,
harness.timed_row, machine.py, report.py), so a kernel report has the same envelope and rows as
`dinov3-deploy bench`'s.

    python -m dinov3_deploy.bench.kernels_bench --out results.json          # a CUDA GPU (Hopper)
    python -m dinov3_deploy.bench.kernels_bench --smoke --out smoke.json    # CPU: toy sizes, interpreter

Sections (random data; kernels timed with triton.testing.do_bench, models with CUDA events):
  host       (only when named) host cost per call of the rope_attention op: torch.profiler, wall
             clock, and our Python alone with the launches stubbed
  attention  the Triton kernel (pointer and TMA loads) vs PyTorch SDPA (cuDNN, flash), bf16,
             head dim 64, N = 1029 / 4101, H = 6 / 12 / 16, B = 1 / 8 / 32
  fused      qkv [B, N, 3D] -> [B, N, D]: Triton qkv+RoPE+attention vs eager split + rope_apply + cuDNN SDPA
  stitch     2048x1024 image, 150 classes, crop 512 / stride 341 (18 windows of 32x32 logits): the
             Triton stitch vs the naive pad-and-add canvas (mmseg style) and the reference's
             slide_inference accumulation
  configs    a few block/warp/stage configurations of the attention and stitch kernels beside the
             launcher's own choice ("heuristic"), so one run shows whether the heuristic picked well
  msda       multi-scale deformable attention at 896x896, bf16, B=1 (queries = all tokens of the
             3 levels 112x112 / 56x56 / 28x28, 4 points): the pixel decoder's (hidden 2048, 16 heads,
             head dim 128: vit7b16 and vitl16 alike) and the adapter extractors' (value = the 56x56
             patch map, width D/2: head dim 128 for vit7b16, 32 for vitl16). The Triton kernel vs the
             plain PyTorch core (grid_sample per level) eager and (pixel decoder) under torch.compile; time and peak
             memory (CUDA events, so inputs are counted too)
  m2f        (only when named) the whole Mask2Former segmentor forward, vitl16 hidden 2048 at 896x896,
             B=1, bf16: the deformable-attention kernel (eager, compiled) vs torch.compile of the plain
             core; peak memory per row
  e2e        vitl16 / vitb16 backbone forward at 512x512, B = 1 / 8, bf16: torch.compile (SDPA) and
             attn_impl="triton" under torch.compile, each in mode "default" and "reduce-overhead"
             (Inductor's CUDA graphs); --smoke: eager and triton eager on a tiny ViT
`--summarize FOLDER` reads a gpu_check.sh results folder back and prints the issue's goals.
Every row carries parity against a plain-PyTorch fp32 reference (attention and fused on batch
element 0, which is what fits: the reference materialises the N x N scores). Rows of kernels
that run `tl.dot` record `dot_precision` ("ieee" for fp32 inputs: no TF32, else the dtype);
rows of the attention kernel record the `load_path` that ran ("tma" or "pointer") and why.
--smoke runs every section's code path at toy sizes on the CPU (Triton interpreter); its timings
mean nothing, its parity does.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dinov3_deploy.bench.harness import skipped_row, timed_row
from dinov3_deploy.bench.machine import machine_info
from dinov3_deploy.bench.report import markdown, write_report
from dinov3_deploy.bench.timing import measure, measure_kernel
from dinov3_deploy.kernels.precision import dot_precision  # the one definition (Triton-free)
from dinov3_deploy.verification.parity import THRESHOLDS, OutputParity, compare_output

SECTIONS = ("attention", "fused", "stitch", "configs", "msda", "e2e")  # the default run; "host", "m2f" when named
PRECISION = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def load_path(use_tma: bool, device: torch.device | str, tensors: tuple[torch.Tensor, ...] = ()) -> dict:
    """Which attention load path runs for `use_tma` on `device` (and these q/k/v/out, whose
    alignment also decides), as the kernel's launcher decides it."""
    from dinov3_deploy.kernels.attention import resolve_load_path

    path, reason = resolve_load_path(use_tma, torch.device(device), tensors)
    return {"load_path": path, "load_path_reason": reason}


# ----------------------------------------------------------------------------------------------
# one run: where rows go, how they are timed
# ----------------------------------------------------------------------------------------------
@dataclass
class Run:
    device: str
    dtype: torch.dtype
    smoke: bool
    deadline: float  # time.time() after which cases are recorded as skipped
    rows: list[dict]
    save: Callable[[], None] = lambda: None
    batches: tuple[int, ...] = (1, 8)  # the e2e section's batch sizes

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def precision(self) -> str:
        return PRECISION[self.dtype]

    def kernel(self, row: dict, fn: Callable[[], object], check=None, flops: float | None = None) -> None:
        """A kernel (or a library call it competes with): do_bench on a GPU. No peak memory: do_bench's
        own L2-flush buffer (hundreds of MiB) would be counted as the kernel's."""
        timer = functools.partial(measure_kernel, cuda=self.cuda, warmup=0, iters=1)
        self._add(row, fn, timer, check, flops, track_memory=False)

    def model(self, row: dict, fn: Callable[[], object], check=None) -> None:
        """A whole forward pass: CUDA events, peak memory."""
        timer = functools.partial(measure, warmup=0 if self.smoke else 3, iters=1 if self.smoke else 20,
                                  cuda=self.cuda)
        self._add(row, fn, timer, check, None, track_memory=True)

    def _add(self, row, fn, timer, check, flops, track_memory) -> None:
        if time.time() > self.deadline:
            self.rows.append(skipped_row(row, "time budget of the run spent"))
            return
        self.rows.append(timed_row(row, fn, timer, check=check, cuda=self.cuda, track_memory=track_memory,
                                   flops=flops))


def _row(section: str, target: str, shape: str, dtype: torch.dtype, **extra) -> dict:
    return {"section": section, "target": target, "shape": shape, "dtype": str(dtype).removeprefix("torch."),
            "precision": PRECISION.get(dtype, "fp32"), **extra}


def _np(t: torch.Tensor):
    t = t.detach()
    return (t.float() if t.is_floating_point() else t).cpu().numpy()


def against(ref: torch.Tensor, precision: str, case: str, *, labels: bool = False):
    """check(out) for timed_row: out's leading ref.shape[0] entries vs ref. Float outputs are
    compared as rows of their last dimension (tokens / head vectors); integer ones as label maps."""
    r = _np(ref)
    th = THRESHOLDS[precision]

    def check(out: torch.Tensor) -> list[OutputParity]:
        o = _np(out[: ref.shape[0]])
        if labels:
            return [compare_output("labels", case, r, o, "seg", th)]
        return [compare_output("out", case, r.reshape(-1, r.shape[-1]), o.reshape(-1, o.shape[-1]), "kernel", th)]

    return check


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def _sdpa_backends(run: Run) -> dict:
    from torch.nn.attention import SDPBackend

    if run.smoke:
        return {"sdpa_math": SDPBackend.MATH}
    return {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------
def bench_attention(run: Run) -> None:
    shapes = [(1, 2, 21, 64)] if run.smoke else [
        (B, H, 1029, 64) for H in (12, 6, 16) for B in (1, 8)
    ] + [(1, 16, 4101, 64), (8, 16, 4101, 64)]
    for B, H, N, hd in shapes:
        _attention_case(run, B, H, N, hd)
        run.save()


def _attention_case(run: Run, B: int, H: int, N: int, hd: int) -> None:
    from dinov3_deploy.kernels.attention import attention_flops, attention_into, attention_reference

    shape = f"B={B} H={H} N={N} hd={hd}"
    q, k, v = (torch.randn(B, H, N, hd, device=run.device, dtype=run.dtype) for _ in range(3))
    out = torch.empty_like(q)
    check = against(attention_reference(q[:1].float(), k[:1].float(), v[:1].float()), run.precision, shape)
    fl = attention_flops(B, H, N, hd)
    dims = {"B": B, "H": H, "N": N, "head_dim": hd}
    for target, tma in (("triton", False), ("triton_tma", True)):
        row = _row("attention", target, shape, run.dtype, **dims, dot_precision=dot_precision(run.dtype),
                   **load_path(tma, q.device, (q, k, v, out)))
        run.kernel(row, functools.partial(attention_into, q, k, v, out, use_tma=tma), check, fl)
    for target, be in _sdpa_backends(run).items():
        run.kernel(_row("attention", target, shape, run.dtype, **dims), functools.partial(_sdpa(be), q, k, v),
                   check, fl)


def bench_fused(run: Run) -> None:
    from torch.nn.attention import SDPBackend

    cases = [(1, 2, 4, 64)] if run.smoke else [(B, H, 32, 64) for H in (12, 16) for B in (1, 8, 32)]
    sdpa = _sdpa(SDPBackend.MATH if run.smoke else SDPBackend.CUDNN_ATTENTION)
    for B, H, g, hd in cases:
        _fused_case(run, B, H, g, hd, sdpa)
        run.save()


def _fused_case(run: Run, B: int, H: int, g: int, hd: int, sdpa) -> None:
    from dinov3_deploy.kernels.attention import attention_flops
    from dinov3_deploy.kernels.fused_attention import rope_attention, rope_attention_reference
    from dinov3_deploy.reference.models.layers.rope import RopePositionEmbedding, rope_apply

    N, D = 5 + g * g, H * hd  # cls + 4 storage tokens, then a g x g patch grid
    shape = f"B={B} H={H} N={N} hd={hd}"
    sin, cos = RopePositionEmbedding(hd, device=run.device)(g, g)
    qkv = torch.randn(B, N, 3 * D, device=run.device, dtype=run.dtype)

    def split():
        return qkv.reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)

    def eager():
        q, k, v = split()
        q, k = rope_apply(q, sin, cos), rope_apply(k, sin, cos)
        return sdpa(q, k, v).transpose(1, 2).reshape(B, N, D)

    def eager_rope_only():
        q, k, _ = split()
        return rope_apply(q, sin, cos), rope_apply(k, sin, cos)

    check = against(rope_attention_reference(qkv[:1].float(), sin, cos, H), run.precision, shape)
    fl = attention_flops(B, H, N, hd)
    dims = {"B": B, "H": H, "N": N, "head_dim": hd}
    run.kernel(_row("fused", "triton_fused", shape, run.dtype, **dims, dot_precision=dot_precision(run.dtype),
                    **load_path(False, qkv.device)),
               lambda: rope_attention(qkv, sin, cos, H), check, fl)
    run.kernel(_row("fused", "eager_rope_sdpa", shape, run.dtype, **dims), eager, check, fl)
    # the RoPE share of the eager path: a part of the work, so no speedup is quoted against it
    run.kernel(_row("fused", "eager_rope_only", shape, run.dtype, **dims, component=True), eager_rope_only)


def _stitch_problem(run: Run):
    """Image size, classes, crop, stride and low-resolution window logits (one per window of the
    reference's window_grid, the one definition of window placement)."""
    from dinov3_deploy.reference.protocol.sliding_window import window_grid

    H, W, C, crop, stride, low = (12, 20, 4, 10, 6, 3) if run.smoke else (1024, 2048, 150, 512, 341, 32)
    windows = window_grid(H, W, crop, stride)
    logits = torch.randn(len(windows), C, low, low, device=run.device)
    return H, W, C, crop, stride, windows, logits


def naive_pad_and_add(logits, H, W, windows, n_classes):
    """The mmseg-style path: each window's upsampled logits padded to a full-size canvas and added."""
    canvas = logits.new_zeros((1, n_classes, H, W), dtype=torch.float32)
    count = logits.new_zeros((1, 1, H, W), dtype=torch.float32)
    for k, (y0, y1, x0, x1) in enumerate(windows):
        up = F.interpolate(logits[k : k + 1].float(), size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
        canvas += F.pad(up, (x0, W - x1, y0, H - y1))
        count += F.pad(torch.ones_like(up[:, :1]), (x0, W - x1, y0, H - y1))
    return (canvas / count).argmax(1)[0]


def reference_scores(logits, H, W, crop, stride):
    """The reference's own accumulation (slide_inference, all windows in one chunk) fed the
    precomputed window logits: averaged scores [C, H, W]. The 1-channel zero image only gives it
    the crops' sizes."""
    from dinov3_deploy.reference.protocol.sliding_window import slide_inference

    image = logits.new_zeros((1, 1, H, W))
    return slide_inference(lambda crops: logits, image, logits.shape[1], crop, stride, batch_size=logits.shape[0])[0]


def reference_labels(logits, H, W, crop, stride):
    return reference_scores(logits, H, W, crop, stride).argmax(0)


# Two fp32 sums of the same window scores in different orders (a canvas vs a per-pixel gather, or
# two compilations of one kernel) differ by ~1e-6 relative: where the reference's top two classes
# are closer than this, either label is right, and such pixels are left out of the label check.
TIE_MARGIN = 1e-4


def stitch_check(scores: torch.Tensor, case: str):
    """check(labels) for the stitch rows: label agreement with the reference's argmax on the pixels
    whose top-two margin exceeds TIE_MARGIN (the fp32 label gate is 100 %), and how many were left out."""
    top2 = scores.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > TIE_MARGIN
    ref = _np(scores.argmax(0)[clear])
    mask = clear.cpu().numpy()
    tied = float(1.0 - mask.mean())

    def check(labels: torch.Tensor) -> list[OutputParity]:
        res = compare_output("labels", f"{case} ({tied:.1e} of pixels within {TIE_MARGIN:g} of a tie, not compared)",
                             ref, _np(labels)[mask], "seg", THRESHOLDS["fp32"])
        return [res]

    return check


def bench_stitch(run: Run) -> None:
    from dinov3_deploy.kernels.stitch import stitch_into

    H, W, C, crop, stride, windows, logits = _stitch_problem(run)
    shape = f"{H}x{W} C={C} crop={crop} stride={stride}"
    labels = torch.empty((H, W), dtype=torch.int64, device=run.device)
    probs = torch.empty((C, H, W), device=run.device)
    check = stitch_check(reference_scores(logits, H, W, crop, stride), shape)
    dims = {"H": H, "W": W, "classes": C, "windows": len(windows)}

    def triton(with_probs: bool):
        stitch_into(logits, (H, W), crop, stride, labels, probs if with_probs else None)
        return labels

    run.kernel(_row("stitch", "triton_labels", shape, torch.float32, **dims), lambda: triton(False), check)
    run.kernel(_row("stitch", "triton_labels_probs", shape, torch.float32, **dims), lambda: triton(True), check)
    run.kernel(_row("stitch", "naive_pad_add", shape, torch.float32, **dims),
               lambda: naive_pad_and_add(logits, H, W, windows, C), check)
    run.kernel(_row("stitch", "reference_slide_inference", shape, torch.float32, **dims),
               lambda: reference_labels(logits, H, W, crop, stride))
    run.save()


def bench_configs(run: Run) -> None:
    from dinov3_deploy.kernels.attention import attention_config, attention_flops, attention_into, attention_reference
    from dinov3_deploy.kernels.stitch import stitch_config, stitch_into

    att_cfgs = [(16, 16, 4, 1)] if run.smoke else [(128, 64, 8, 3), (64, 64, 4, 3), (64, 128, 4, 3), (32, 64, 4, 3),
                                                   (32, 64, 2, 3)]
    for B, H, N, hd in [(1, 2, 21, 64)] if run.smoke else [(1, 12, 1029, 64), (1, 6, 1029, 64), (8, 12, 1029, 64)]:
        q, k, v = (torch.randn(B, H, N, hd, device=run.device, dtype=run.dtype) for _ in range(3))
        out = torch.empty_like(q)
        shape = f"B={B} H={H} N={N} hd={hd}"
        check = against(attention_reference(q[:1].float(), k[:1].float(), v[:1].float()), run.precision, shape)
        extra = {"kernel": "attention", "B": B, "H": H, "N": N, "head_dim": hd,
                 "dot_precision": dot_precision(run.dtype), **load_path(False, q.device, (q, k, v, out))}
        choices = [("heuristic", None)] + [
            (f"m{bm}_n{bn}_w{w}_s{st}", dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st))
            for bm, bn, w, st in att_cfgs]
        for name, cfg in choices:
            shown = cfg or attention_config(B, H, N, hd, q.device)
            run.kernel(_row("configs", name, shape, run.dtype, **extra, config=shown),
                       functools.partial(attention_into, q, k, v, out, config=cfg), check, attention_flops(B, H, N, hd))
        run.save()

    H, W, C, crop, stride, windows, logits = _stitch_problem(run)
    shape = f"{H}x{W} C={C} crop={crop} stride={stride}"
    labels = torch.empty((H, W), dtype=torch.int64, device=run.device)
    check = stitch_check(reference_scores(logits, H, W, crop, stride), shape)
    choices = [("heuristic", None)] + [(f"p{bp}_c{bc}_w{w}", dict(BLOCK_P=bp, BLOCK_C=bc, num_warps=w))
                                       for bp, bc, w in ([(32, 4, 4)] if run.smoke else
                                                         [(128, 8, 4), (64, 8, 4), (256, 8, 8)])]
    for name, cfg in choices:
        def fn(cfg=cfg):
            stitch_into(logits, (H, W), crop, stride, labels, config=cfg)
            return labels

        shown = cfg or stitch_config(labels.device, W, C)
        run.kernel(_row("configs", name, shape, torch.float32, kernel="stitch", H=H, W=W, classes=C, config=shown),
                   fn, check)
    run.save()


def bench_e2e(run: Run) -> None:
    """Backbone forward passes; every variant compared with the fp32 SDPA model on the same input.
    Release-like random weights: with the training init a ViT is nearly the identity and a wrong
    attention would still pass parity."""
    models = ("vitl16", "vitb16")
    cases = [("vit_tiny_test", 1, 32)] if run.smoke else [(m, B, 512) for B in run.batches for m in models]
    # compile: Inductor, default mode; _ro: mode="reduce-overhead" (Inductor's CUDA graphs: no host cost per op)
    variants = ["eager", "triton"] if run.smoke else ["compile", "compile_ro", "triton_compile", "triton_compile_ro"]
    for name, B, size in cases:
        shape = f"{name} B={B} {size}x{size}"
        if time.time() > run.deadline:
            run.rows += [skipped_row(_row("e2e", var, shape, run.dtype), "time budget of the run spent")
                         for var in variants]
            continue
        _e2e_case(run, name, B, size, shape, variants)
        if not run.smoke:
            torch._dynamo.reset()


def _e2e_case(run: Run, name: str, B: int, size: int, shape: str, variants: list[str]) -> None:
    from dinov3_deploy.reference.factory import create_backbone

    base = create_backbone(name, device=run.device, init="release-like")
    x = torch.randn(B, 3, size, size, device=run.device)
    ref = base.forward_features(x)["x_norm_patchtokens"]
    check = against(ref, run.precision, shape)
    x = x.to(run.dtype)
    for var in variants:
        impl = "triton" if "triton" in var else "sdpa"
        model = create_backbone(name, device=run.device, attn_impl=impl)
        model.load_state_dict(base.state_dict())
        model = model.to(run.dtype)
        mode = "reduce-overhead" if var.endswith("_ro") else "default"
        fwd = torch.compile(model.forward_features, mode=mode) if "compile" in var else model.forward_features
        extra = {"model": name, "B": B, "size": size, "attn_impl": impl, "compile": "compile" in var,
                 "compile_mode": mode if "compile" in var else None}
        if impl == "triton":
            extra.update(dot_precision=dot_precision(run.dtype), **load_path(False, x.device))
        run.model(_row("e2e", var, shape, run.dtype, **extra), lambda fwd=fwd: fwd(x)["x_norm_patchtokens"], check)
        del model, fwd
        run.save()


def bench_host(run: Run) -> None:
    """Host (CPU) cost per call of `dinov3_deploy::rope_attention` at vitl16's B=1 512x512 shape
    (qkv [1, 1029, 3072], 16 heads): what bounds a forward when the GPU work per call is ~30 us.
    One aggregate per row (mean over the calls): median/p10/p90 all carry it, in ms.
      op_profiled      torch.profiler's CPU time of the op (self + children), mean per call
      op_wall          wall time of back-to-back calls (max of host and GPU time per call)
      wrapper_stubbed  the op with both Triton launches replaced by no-ops: our Python alone
    """
    from dinov3_deploy.kernels import fused_attention as FA
    from dinov3_deploy.reference.models.layers.rope import RopePositionEmbedding

    B, H, g, hd = (1, 2, 4, 64) if run.smoke else (1, 16, 32, 64)
    N = 5 + g * g
    shape = f"B={B} H={H} N={N} hd={hd}"
    sin, cos = RopePositionEmbedding(hd, device=run.device)(g, g)
    qkv = torch.randn(B, N, 3 * H * hd, device=run.device, dtype=run.dtype)
    op = torch.ops.dinov3_deploy.rope_attention
    calls = 3 if run.smoke else 300
    sync = torch.cuda.synchronize if run.cuda else (lambda: None)

    def wall_us() -> float:
        for _ in range(3):
            op(qkv, sin, cos, H)
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            op(qkv, sin, cos, H)
        sync()
        return (time.perf_counter() - t0) / calls * 1e6

    def add(target: str, us: float, **extra) -> None:
        ms = round(us / 1e3, 5)
        clock = "torch.profiler" if target == "op_profiled" else "perf_counter"
        run.rows.append({**_row("host", target, shape, run.dtype, B=B, H=H, N=N, head_dim=hd, calls=calls, **extra),
                         "status": "ok", "median_ms": ms, "p10_ms": ms, "p90_ms": ms, "min_ms": ms, "iters": calls,
                         "clock": clock, "parity": [], "host_us_per_call": round(us, 2)})

    try:
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if run.cuda else [])
        wall_us()  # warm: compiled kernels, the per-shape plan
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(calls):
                op(qkv, sin, cos, H)
            sync()
        ev = next(e for e in prof.key_averages() if e.key == "dinov3_deploy::rope_attention")
        gpu = getattr(ev, "device_time_total", 0) or 0
        add("op_profiled", ev.cpu_time_total / ev.count, gpu_us_per_call=round(gpu / ev.count, 2) if run.cuda else None)
        add("op_wall", wall_us())

        class NoLaunch:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: None

        saved = FA._qkv_rope_kernel, FA._attn_fwd_kernel
        FA._qkv_rope_kernel = FA._attn_fwd_kernel = NoLaunch()
        try:
            add("wrapper_stubbed", wall_us())
        finally:
            FA._qkv_rope_kernel, FA._attn_fwd_kernel = saved
    except Exception as exc:  # noqa: BLE001 - a failed measurement is a row, not the end of the run
        run.rows.append(skipped_row(_row("host", "op_profiled", shape, run.dtype), f"{type(exc).__name__}: {exc}"))
    run.save()


def msda_cases(smoke: bool) -> list[tuple[str, list[tuple[int, int]], int, int, int, int]]:
    """(name, value level shapes, queries, heads, head dim, points): the M2F segmentor's deformable
    attentions at 896x896 (DINOV3-FACTS.md), or toy sizes for --smoke."""
    if smoke:
        return [("toy", [(4, 6), (2, 3), (1, 2)], 12, 2, 8, 2)]
    levels = [(112, 112), (56, 56), (28, 28)]  # strides 8 / 16 / 32 of 896
    q = sum(h * w for h, w in levels)
    return [("pixel_decoder_hidden2048", levels, q, 16, 128, 4),  # vit7b16 and vitl16 (both hidden 2048)
            ("adapter_vit7b16", [(56, 56)], q, 16, 128, 4),  # value width 4096 / 2
            ("adapter_vitl16", [(56, 56)], q, 16, 32, 4)]  # value width 1024 / 2


def bench_msda(run: Run) -> None:
    for case in msda_cases(run.smoke):
        _msda_case(run, *case)
        run.save()


def _msda_case(run: Run, name: str, shapes, Q: int, M: int, Dh: int, P: int) -> None:
    from dinov3_deploy.kernels.ms_deform_attn import ms_deform_attn_bytes, ms_deform_attn_flat
    from dinov3_deploy.reference.models.ms_deform_attn import ms_deform_attn_core

    B, L, S = 1, len(shapes), sum(h * w for h, w in shapes)
    shape = f"{name} B={B} Q={Q} M={M} Dh={Dh} L={L} P={P} levels={'/'.join(f'{h}x{w}' for h, w in shapes)}"
    g = torch.Generator(device=run.device).manual_seed(0)
    value = torch.randn(B, S, M, Dh, device=run.device, generator=g).to(run.dtype)
    # around each query's own point, a few pixels out as trained offsets put them; some off the map
    loc = (torch.rand(B, Q, M, L, P, 2, device=run.device, generator=g) * 1.2 - 0.1).to(run.dtype)
    weights = torch.rand(B, Q, M, L, P, device=run.device, generator=g).softmax(-1).to(run.dtype)
    check = against(ms_deform_attn_core(value.float(), shapes, loc.float(), weights.float()), run.precision, shape)
    dims = {"B": B, "Q": Q, "heads": M, "head_dim": Dh, "levels": L, "points": P,
            "min_bytes": ms_deform_attn_bytes(B, S, Q, M, Dh, L, P, value.element_size())}
    args = (value, shapes, loc, weights)
    run.model(_row("msda", "triton", shape, run.dtype, **dims), functools.partial(ms_deform_attn_flat, *args), check)
    run.model(_row("msda", "plain_eager", shape, run.dtype, **dims), functools.partial(ms_deform_attn_core, *args),
              check)
    # torch.compile: the goal's case only (one Inductor compile of a few tens of seconds); never on the
    # CPU smoke run, where it would take minutes and mean nothing
    if not run.smoke and name.startswith("pixel_decoder"):
        compiled = torch.compile(ms_deform_attn_core, dynamic=False)
        run.model(_row("msda", "plain_compile", shape, run.dtype, **dims), functools.partial(compiled, *args), check)


def bench_m2f(run: Run) -> None:
    """The whole Mask2Former segmentor forward (backbone, adapter, pixel decoder, decoder) with the Triton
    deformable-attention kernel against torch.compile of the plain core (the issue's 1.3x goal), peak
    memory per row; backbone attention SDPA in every row, so only the deformable core differs. vitl16
    (hidden 2048, 150 classes: the release's head shape) at 896x896, B=1; --smoke: the tiny segmentor."""
    name, hidden, size = ("vit_tiny_test", 32, 64) if run.smoke else ("vitl16", 2048, 896)
    shape = f"{name} hidden={hidden} B=1 {size}x{size}"
    variants = ["plain_eager"] if run.smoke else ["plain_compile", "triton_eager", "triton_compile"]
    if run.smoke:  # measured: 274 s per forward of the tiny segmentor under the interpreter (rel 7.5e-7 to plain)
        run.rows.append(skipped_row(_row("m2f", "triton_eager", shape, run.dtype), "minutes under the interpreter"))
    if time.time() > run.deadline:
        run.rows += [skipped_row(_row("m2f", v, shape, run.dtype), "time budget of the run spent") for v in variants]
        return
    from dinov3_deploy.reference import create_segmentor

    seg = create_segmentor(name, hidden_dim=hidden, num_classes=5 if run.smoke else 150, device=run.device)
    x = torch.randn(1, 3, size, size, device=run.device)
    with torch.no_grad():
        check = against(seg(x)["pred_masks"], run.precision, shape)  # fp32, plain core
    seg, x = seg.to(run.dtype), x.to(run.dtype)
    for var in variants:
        core = var.split("_")[0]
        seg.set_deform_impl(core)
        fwd = torch.compile(seg, dynamic=False) if var.endswith("compile") else seg
        extra = {"model": name, "hidden": hidden, "size": size, "deform_impl": core, "compile": "compile" in var}
        run.model(_row("m2f", var, shape, run.dtype, **extra), lambda fwd=fwd: fwd(x)["pred_masks"], check)
        run.save()
        if not run.smoke:
            torch._dynamo.reset()


BENCHES = {"host": bench_host, "attention": bench_attention, "fused": bench_fused, "stitch": bench_stitch,
           "configs": bench_configs, "msda": bench_msda, "e2e": bench_e2e, "m2f": bench_m2f}


def baselines(smoke: bool) -> dict[str, str]:
    """Per section, the target the others' speedups are quoted against (the project's goals:
    attention >= cuDNN, fused >= 2x eager, stitch >= 20x the naive canvas, e2e vs torch.compile)."""
    return {"host": "op_profiled", "attention": "sdpa_math" if smoke else "cudnn", "fused": "eager_rope_sdpa",
            "stitch": "naive_pad_add", "msda": "plain_eager" if smoke else "plain_compile",
            "configs": "heuristic", "e2e": "eager" if smoke else "compile",
            "m2f": "plain_eager" if smoke else "plain_compile"}


def _ok(rows, **match) -> dict:
    """{target: row} of the ok rows whose fields equal `match`."""
    return {r["target"]: r for r in rows if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items())}


def summarize(folder: Path) -> str:
    """The issue's goals read off one gpu_check.sh run's reports (host.json, kernels.json, model.json,
    e2e.json in `folder`): Markdown lines, whatever subset of the reports exists."""
    import json

    def rows(name: str) -> list[dict]:
        p = folder / name
        return json.loads(p.read_text())["rows"] if p.exists() else []

    out = ["# gpu_check summary", ""]
    host = _ok(rows("host.json"))
    if host:
        out.append("host us/call of rope_attention: " + ", ".join(
            f"{t} {r['host_us_per_call']}" + (f" (GPU {r['gpu_us_per_call']})" if r.get("gpu_us_per_call") else "")
            for t, r in host.items()) + "  [goal: op_profiled <= 30]")
    kern = rows("kernels.json")
    for B, H, N in [(1, 12, 1029), (1, 6, 1029), (8, 12, 1029), (1, 16, 4101)]:
        att = _ok(kern, section="attention", B=B, H=H, N=N)
        if "triton" in att and "cudnn" in att:
            out.append(f"attention B={B} H={H} N={N}: triton {att['triton'].get('tflops')} vs cudnn "
                       f"{att['cudnn'].get('tflops')} TFLOP/s")
        cfg = _ok(kern, section="configs", B=B, H=H, N=N)
        if cfg:
            best = min(cfg.values(), key=lambda r: r["median_ms"])
            out.append(f"  configs: best {best['target']} {best.get('tflops')} TFLOP/s, heuristic "
                       f"{cfg.get('heuristic', {}).get('tflops')}")
    st = {r["target"]: r for r in kern if r.get("section") == "stitch"}
    if "naive_pad_add" in st:
        for t in ("triton_labels", "triton_labels_probs"):
            r = st.get(t, {})
            speed = st["naive_pad_add"].get("median_ms", 0) / r["median_ms"] if r.get("median_ms") else None
            out.append(f"stitch {t}: {r.get('median_ms')} ms, {speed and round(speed, 2)}x naive, {r.get('status')}"
                       f"  [goals: labels >= 20x, labels+probs >= 10x and ok]")
    ms = [r for r in kern if r.get("section") == "msda"]
    for case in dict.fromkeys(r["shape"] for r in ms):
        got = {r["target"]: r for r in ms if r["shape"] == case}
        tri = got.get("triton", {})
        line = f"msda {case.split()[0]}: " + ", ".join(
            f"{t} {r.get('median_ms')} ms {r.get('peak_mem_mb')} MB ({r.get('status')})"
            for t, r in got.items())
        for base in ("plain_eager", "plain_compile"):
            if tri.get("median_ms") and got.get(base, {}).get("median_ms"):
                line += f"; {got[base]['median_ms'] / tri['median_ms']:.2f}x {base}"
        out.append(line + "  [goals: >= 3x the plain core, less memory]")
    seg = {r["target"]: r for r in rows("m2f.json") if r.get("section") == "m2f"}
    if seg:
        line = "m2f segmentor forward: " + ", ".join(
            f"{t} {r.get('median_ms')} ms {r.get('peak_mem_mb')} MB ({r.get('status')})" for t, r in seg.items())
        ours = [seg[t]["median_ms"] for t in ("triton_eager", "triton_compile") if seg.get(t, {}).get("median_ms")]
        if ours and seg.get("plain_compile", {}).get("median_ms"):
            line += f"; {seg['plain_compile']['median_ms'] / min(ours):.2f}x plain_compile"
        out.append(line + "  [goal: kernel >= 1.3x torch.compile of the plain core]")
    stitch_mem = folder / "m2f_stitch_memory.json"
    if stitch_mem.exists():
        out.append("m2f stitch peak MiB: " + ", ".join(f"{r['name']} {r['peak_mib']} (labels equal "
                                                       f"{r['labels_equal_scores_path']})"
                                                       for r in json.loads(stitch_mem.read_text())["rows"]))
    model = [r for r in rows("model.json") if r.get("section") == "e2e"]
    for name in ("vitb16", "vitl16"):
        for B in (1, 8):
            got = _ok(model, model=name, B=B)
            comp = [got[t]["median_ms"] for t in ("compile", "compile_ro") if t in got]
            ours = [got[t]["median_ms"] for t in ("triton_compile", "triton_compile_ro") if t in got]
            if not got:
                continue
            line = f"model {name} B={B}: " + ", ".join(f"{t} {r['median_ms']} ms" for t, r in got.items())
            if comp and ours:
                line += f"; ours/best-compile speedup {min(comp) / min(ours):.2f}x"
            out.append(line)
    for r in rows("e2e.json"):
        out.append(f"e2e {r.get('combo')}: {r.get('images_per_s')} images/s ({r.get('status')})")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="report JSON to write (a .md lands beside it)")
    ap.add_argument("--summarize", type=Path, help="print the goals read off a gpu_check.sh results folder, then exit")
    ap.add_argument("--smoke", action="store_true", help="toy sizes; runs on the CPU through the Triton interpreter")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--batches", default="1,8", help="e2e section: the batch sizes, in order")
    ap.add_argument("--budget-s", type=float, default=330.0,
                    help="cases that would start after this many seconds are recorded as skipped")
    args = ap.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize), end="")
        return 0
    if args.out is None:
        ap.error("--out is required")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in BENCHES]
    if unknown:
        ap.error(f"unknown sections {', '.join(unknown)} (choose from {', '.join(BENCHES)})")
    if not torch.cuda.is_available():
        if not args.smoke:
            print("no CUDA device: only --smoke runs here", file=sys.stderr)
            return 2
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels import triton
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    start = time.time()
    report = {
        "kind": "kernel",
        "machine": machine_info(),
        "config": {"title": "performance core" + (" (smoke)" if args.smoke else ""), "smoke": args.smoke,
                   "device": dev, "dtype": str(dtype).removeprefix("torch."), "sections": sections,
                   "budget_s": args.budget_s, "baselines": baselines(args.smoke),
                   "timing": {"kernel": "triton.testing.do_bench warmup 25 ms, rep 100 ms" if dev == "cuda"
                              else "perf_counter, 1 call after the first",
                              "model": "CUDA events, 3 warm-up + 20 calls" if dev == "cuda"
                              else "perf_counter, 1 call after the first"}},
        "rows": [],
    }

    def save() -> None:
        report["wall_s"] = round(time.time() - start, 1)
        write_report(report, args.out, png=False)

    run = Run(dev, dtype, args.smoke, start + args.budget_s, report["rows"], save,
              tuple(int(b) for b in args.batches.split(",")))
    with torch.no_grad():
        for name in sections:
            BENCHES[name](run)
            save()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

// Window logits -> labels, the official protocol (reference/protocol/sliding_window.py
// slide_inference + argmax): each window's logits upsampled to the window, summed on an image-size
// canvas, divided by the per-pixel count, resized to the output size, argmax (first maximum wins).
// stitch_labels_cpu does it on the host with resize.h's PyTorch-exact arithmetic; stitch_labels_cuda
// (built with -DDINOV3_WITH_CUDA=ON) runs the project's Triton kernel (kernels/stitch.py), compiled
// ahead of time to C by triton.tools.compile at build time.
#pragma once

#include <cstdint>
#include <vector>

#include "dinov3_deploy/geometry.h"
#include "dinov3_deploy/resize.h"
#include "dinov3_deploy/status.h"

namespace dinov3_deploy {

// slide_inference itself: logits [g.size()][classes][lh][lw] (windows row-major) -> the averaged
// scores [classes][out_h][out_w] (each window's upsampled to the window, summed, divided by the count,
// resized to the output size).
Planes stitch_scores_cpu(const float* logits, int classes, int lh, int lw, const WindowGeometry& g, int out_h,
                         int out_w);
// [out_h][out_w] the class of the largest score per pixel, the first of equal maxima (torch.argmax).
std::vector<int32_t> argmax_classes(const Planes& scores);
// argmax_classes(stitch_scores_cpu(...)): labels [out_h][out_w].
std::vector<int32_t> stitch_labels_cpu(const float* logits, int classes, int lh, int lw, const WindowGeometry& g,
                                       int out_h, int out_w);

bool cuda_stitch_built();
// The same on the GPU: logits on the host are copied to the device, stitched there by the AOT
// Triton kernel on `stream` (a cudaStream_t, null: the default stream), labels copied back.
Status stitch_labels_cuda(const float* logits, int classes, int lh, int lw, const WindowGeometry& g, int out_h,
                          int out_w, std::vector<int32_t>* labels, void* stream = nullptr);

}  // namespace dinov3_deploy

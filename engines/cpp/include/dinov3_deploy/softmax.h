// torch.softmax(x, dim=1) of a [1, C, H, W] float32 tensor on the CPU, bit for bit: the M2F protocol
// sums the views' probabilities, so a last-bit difference can move a near-tie. PyTorch's kernel for a
// non-last dim (SoftMaxKernel.cpp _vec_softmax) runs per pixel: the max over the classes, exp(x - max),
// their sum in class order, each divided by the sum. Its loop over the H*W pixels is split by
// parallel_for (grain 0) into one chunk of divup(H*W, threads) pixels per thread; within a chunk, whole
// vectors of pixels take the vectorised exp, SLEEF's expf_u10 (sleefsimdsp.c xexpf: a polynomial with
// fused multiply-adds), the last < vector-width pixels the scalar std::exp. (torch.exp on a tensor gives
// other values, measured: it is not the reference here.) torch_cpu.h gives the thread count and width.
#pragma once

#include "dinov3_deploy/resize.h"

namespace dinov3_deploy {

// In place over the classes of planes [C][H][W].
void softmax_classes(Planes* scores);
// Sleef_expf16_u10 / Sleef_expf8_u10 (PyTorch's Vectorized<float>::exp on x86), one lane.
float sleef_expf_u10(float d);

}  // namespace dinov3_deploy

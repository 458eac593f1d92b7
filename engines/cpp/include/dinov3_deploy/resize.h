// Bilinear resize (align_corners=False) bit for bit as PyTorch's CPU kernel computes it, since the
// labels must equal `infer`'s pixel for pixel and a logit that differs in its last bit can flip a
// near-tie. PyTorch (2.x, x86 AVX2/AVX512 and aarch64 builds, where the compiler fuses multiply-adds)
// takes one of two kernels by shape:
//   - the "channels last" kernel when out_h + out_w <= 128, or for 3 channels when PyTorch runs one
//     intra-op thread (environment DINOV3_TORCH_THREADS, default: the machine's core count, as PyTorch):
//     s = fma(v00, w00, v01 * w01); s = fma(v10, w10, s); s = fma(v11, w11, s), with w00 = h0 * w0...
//   - the generic kernel otherwise: r = fma(v0, w0, v1 * w1) along W, then the same along H.
// Source index: fma(scale, dst + 0.5, -0.5) clamped at 0, scale = in / out in float; an axis whose size
// does not change is copied. Both are written with std::fma so they do not depend on this compiler.
#pragma once

#include <cstddef>
#include <vector>

namespace dinov3_deploy {

// float planes [n][h][w] (n = batch * channels), contiguous.
struct Planes {
  int n = 0, h = 0, w = 0;
  std::vector<float> data;
  float* plane(int i) { return data.data() + static_cast<std::size_t>(i) * h * w; }
  const float* plane(int i) const { return data.data() + static_cast<std::size_t>(i) * h * w; }
};

// `channels`: the C of the tensor PyTorch would see ([N, C, H, W]); it only picks the kernel.
Planes resize_bilinear(const Planes& src, int out_h, int out_w, int channels);

}  // namespace dinov3_deploy

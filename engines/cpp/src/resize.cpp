// PyTorch-exact bilinear resize (align_corners=False); resize.h says which arithmetic and why.
#include "dinov3_deploy/resize.h"

#include <algorithm>
#include <cmath>

#include "dinov3_deploy/torch_cpu.h"

namespace dinov3_deploy {
namespace {

struct Axis {
  std::vector<int> i0, i1;
  std::vector<float> l0, l1;
};

Axis axis_weights(int in, int out) {
  Axis a;
  a.i0.resize(static_cast<size_t>(out));
  a.i1.resize(static_cast<size_t>(out));
  a.l0.resize(static_cast<size_t>(out));
  a.l1.resize(static_cast<size_t>(out));
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int d = 0; d < out; ++d) {
    auto k = static_cast<size_t>(d);
    if (in == out) {  // an unchanged axis is copied
      a.i0[k] = a.i1[k] = d;
      a.l0[k] = 1.0f;
      a.l1[k] = 0.0f;
      continue;
    }
    float src = std::fma(scale, static_cast<float>(d) + 0.5f, -0.5f);
    src = src < 0.0f ? 0.0f : src;
    int idx = std::min(static_cast<int>(std::floor(src)), in - 1);
    float lambda = std::min(std::max(src - static_cast<float>(idx), 0.0f), 1.0f);
    a.i0[k] = idx;
    a.i1[k] = idx + (idx < in - 1 ? 1 : 0);
    a.l1[k] = lambda;
    a.l0[k] = 1.0f - lambda;
  }
  return a;
}

}  // namespace

Planes resize_bilinear(const Planes& src, int out_h, int out_w, int channels) {
  Planes dst;
  dst.n = src.n;
  dst.h = out_h;
  dst.w = out_w;
  dst.data.resize(static_cast<size_t>(src.n) * out_h * out_w);
  const Axis ay = axis_weights(src.h, out_h), ax = axis_weights(src.w, out_w);
  const bool channels_last_kernel = out_h + out_w <= 128 || (torch_threads() <= 1 && channels == 3);
  for (int p = 0; p < src.n; ++p) {
    const float* in = src.plane(p);
    float* out = dst.plane(p);
    for (int y = 0; y < out_h; ++y) {
      const auto ky = static_cast<size_t>(y);
      const float* r0 = in + static_cast<size_t>(ay.i0[ky]) * src.w;
      const float* r1 = in + static_cast<size_t>(ay.i1[ky]) * src.w;
      const float h0 = ay.l0[ky], h1 = ay.l1[ky];
      for (int x = 0; x < out_w; ++x) {
        const auto kx = static_cast<size_t>(x);
        const int x0 = ax.i0[kx], x1 = ax.i1[kx];
        const float w0 = ax.l0[kx], w1 = ax.l1[kx];
        float v;
        if (channels_last_kernel) {
          const float w00 = h0 * w0, w01 = h0 * w1, w10 = h1 * w0, w11 = h1 * w1;
          v = std::fma(r0[x0], w00, r0[x1] * w01);
          v = std::fma(r1[x0], w10, v);
          v = std::fma(r1[x1], w11, v);
        } else {
          const float a = std::fma(r0[x0], w0, r0[x1] * w1);
          const float b = std::fma(r1[x0], w0, r1[x1] * w1);
          v = std::fma(a, h0, b * h1);
        }
        out[static_cast<size_t>(y) * out_w + x] = v;
      }
    }
  }
  return dst;
}

}  // namespace dinov3_deploy

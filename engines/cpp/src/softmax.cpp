// PyTorch's CPU softmax over the classes; softmax.h says which arithmetic and why.
#include "dinov3_deploy/softmax.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "dinov3_deploy/torch_cpu.h"

namespace dinov3_deploy {
namespace {

float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// One pixel: x[c * stride], c < classes. `exp` the exp of its lane (vector or scalar tail).
template <class Exp>
void softmax_pixel(float* x, size_t stride, int classes, Exp exp) {
  float mx = x[0];
  for (int c = 1; c < classes; ++c) mx = std::max(mx, x[c * stride]);
  float sum = 0.0f;
  for (int c = 0; c < classes; ++c) {
    x[c * stride] = exp(x[c * stride] - mx);
    sum += x[c * stride];
  }
  for (int c = 0; c < classes; ++c) x[c * stride] /= sum;
}

// _vec_softmax's loop over [begin, end): whole vectors, then the scalar tail.
void softmax_chunk(float* data, size_t hw, int classes, int64_t begin, int64_t end, int64_t vec) {
  int64_t i = begin;
  for (; i + vec <= end; i += vec)
    for (int64_t k = i; k < i + vec; ++k) softmax_pixel(data + k, hw, classes, sleef_expf_u10);
  for (; i < end; ++i) softmax_pixel(data + i, hw, classes, [](float v) { return std::exp(v); });
}

int64_t divup(int64_t a, int64_t b) { return (a + b - 1) / b; }

// 2^q from the exponent bits (vpow2i_vf_vi2)
float pow2i(int32_t q) { return from_bits(static_cast<uint32_t>(q + 0x7f) << 23); }

}  // namespace

float sleef_expf_u10(float d) {
  const int32_t q = static_cast<int32_t>(std::nearbyint(d * 1.442695040888963407359924681001892137426645954152985934135449406931f));
  const auto qf = static_cast<float>(q);
  float s = std::fma(qf, -0.693145751953125f, d);  // d - q * ln 2, ln 2 in two parts
  s = std::fma(qf, -1.428606765330187045e-06f, s);
  float u = 0.000198527617612853646278381f;
  u = std::fma(u, s, 0.00139304355252534151077271f);
  u = std::fma(u, s, 0.00833336077630519866943359f);
  u = std::fma(u, s, 0.0416664853692054748535156f);
  u = std::fma(u, s, 0.166666671633720397949219f);
  u = std::fma(u, s, 0.5f);
  u = 1.0f + std::fma(s * s, u, s);
  u = u * pow2i(q >> 1) * pow2i(q - (q >> 1));  // ldexp in two steps, as vldexp2
  if (d < -104.0f) u = 0.0f;
  if (100.0f < d) u = std::numeric_limits<float>::infinity();
  return u;
}

void softmax_classes(Planes* scores) {
  const int64_t hw = static_cast<int64_t>(scores->h) * scores->w;
  const int classes = scores->n;
  // parallel_for(0, hw, grain 0) under OpenMP: one chunk of divup(hw, threads) pixels per thread
  const int64_t threads = torch_threads();
  const int64_t chunk = hw > 1 && threads > 1 ? divup(hw, threads) : hw;
  for (int64_t begin = 0; begin < hw; begin += chunk)
    softmax_chunk(scores->data.data(), static_cast<size_t>(hw), classes, begin, std::min(hw, begin + chunk),
                  torch_vec_floats());
}

}  // namespace dinov3_deploy

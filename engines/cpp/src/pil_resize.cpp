// PIL's uint8 bilinear resample; pil_resize.h says which arithmetic and why.
#include "dinov3_deploy/pil_resize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace dinov3_deploy {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // PIL's PRECISION_BITS

// One output sample's taps: the first input index and the fixed-point weights from there on.
struct Taps {
  int first = 0;
  std::vector<int32_t> weights;
};

double triangle(double x) {
  x = x < 0.0 ? -x : x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

// precompute_coeffs + normalize_coeffs_8bpc for an axis of `in` samples resized to `out`.
std::vector<Taps> axis_taps(int in, int out) {
  const double scale = static_cast<double>(static_cast<float>(in)) / out;  // PIL's box is float
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;
  const double ss = 1.0 / filterscale;
  std::vector<Taps> taps(static_cast<size_t>(out));
  for (int xx = 0; xx < out; ++xx) {
    const double center = (xx + 0.5) * scale;
    const int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    const int xmax = std::min(static_cast<int>(center + support + 0.5), in) - xmin;
    std::vector<double> k(static_cast<size_t>(std::max(xmax, 0)));
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[static_cast<size_t>(x)] = triangle((x + xmin - center + 0.5) * ss);
      ww += k[static_cast<size_t>(x)];
    }
    Taps& t = taps[static_cast<size_t>(xx)];
    t.first = xmin;
    for (double w : k) {
      if (ww != 0.0) w /= ww;
      const double fixed = w * (1 << kPrecisionBits);
      t.weights.push_back(static_cast<int32_t>(w < 0 ? -0.5 + fixed : 0.5 + fixed));
    }
  }
  return taps;
}

uint8_t clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;  // arithmetic shift, as PIL's lookup index
  return static_cast<uint8_t>(std::min(std::max(v, 0), 255));
}

// Resamples along one axis of an interleaved RGB buffer: `n` lines of `in` pixels -> `out` pixels,
// `step` bytes between neighbouring pixels of a line and `line` bytes between lines (both ways).
void resample(const uint8_t* src, uint8_t* dst, const std::vector<Taps>& taps, int n, size_t src_step,
              size_t src_line, size_t dst_step, size_t dst_line) {
  for (int l = 0; l < n; ++l) {
    for (size_t o = 0; o < taps.size(); ++o) {
      const Taps& t = taps[o];
      for (size_t c = 0; c < 3; ++c) {
        int32_t acc = 1 << (kPrecisionBits - 1);
        for (size_t i = 0; i < t.weights.size(); ++i)
          acc += static_cast<int32_t>(src[l * src_line + (t.first + i) * src_step + c]) * t.weights[i];
        dst[l * dst_line + o * dst_step + c] = clip8(acc);
      }
    }
  }
}

}  // namespace

Image resize_pil_bilinear(const Image& src, int out_h, int out_w) {
  Image cur = src;
  if (out_w != cur.width) {  // horizontal pass first, as PIL
    Image tmp{cur.height, out_w, std::vector<uint8_t>(static_cast<size_t>(cur.height) * out_w * 3)};
    resample(cur.rgb.data(), tmp.rgb.data(), axis_taps(cur.width, out_w), cur.height, 3,
             static_cast<size_t>(cur.width) * 3, 3, static_cast<size_t>(out_w) * 3);
    cur = std::move(tmp);
  }
  if (out_h != cur.height) {
    Image tmp{out_h, cur.width, std::vector<uint8_t>(static_cast<size_t>(out_h) * cur.width * 3)};
    const size_t row = static_cast<size_t>(cur.width) * 3;
    resample(cur.rgb.data(), tmp.rgb.data(), axis_taps(cur.height, out_h), cur.width, row, 3, row, 3);
    cur = std::move(tmp);
  }
  return cur;
}

}  // namespace dinov3_deploy

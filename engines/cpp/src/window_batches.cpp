// Window batches through the Backend; window_batches.h says what it is shared by.
#include "window_batches.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace dinov3_deploy {
namespace {

// The graph input value of plane value `v` of channel `c`.
float input_value(const Manifest& m, float v, size_t c, PlanesHold holds) {
  if (holds == PlanesHold::kNormalized) return v;
  v = std::min(std::max(std::nearbyint(v), 0.0f), 255.0f);
  return m.uint8_input() ? v : (v / 255.0f - m.mean[c]) / m.std[c];
}

}  // namespace

Result<HostTensor> make_input(const Manifest& m, const Planes& p, const std::vector<Window>& crops, PlanesHold holds) {
  Result<DType> dt = dtype_from_name(m.input_dtype);
  if (!dt.ok()) return dt.status();
  const bool nhwc_u8 = m.uint8_input() && holds == PlanesHold::kPixels;
  const int h = crops[0].y1 - crops[0].y0, w = crops[0].x1 - crops[0].x0;
  HostTensor t;
  t.dtype = dt.value();
  t.shape = nhwc_u8 ? std::vector<int64_t>{static_cast<int64_t>(crops.size()), h, w, 3}
                    : std::vector<int64_t>{static_cast<int64_t>(crops.size()), 3, h, w};
  t.bytes.resize(static_cast<size_t>(t.count()) * dtype_size(t.dtype));
  size_t k = 0;
  for (const Window& win : crops) {
    for (size_t c = 0; c < 3; ++c) {
      const float* plane = p.plane(static_cast<int>(c));
      for (int y = 0; y < h; ++y) {
        for (int x = 0; x < w; ++x) {
          const float v = input_value(m, plane[static_cast<size_t>(win.y0 + y) * p.w + (win.x0 + x)], c, holds);
          if (nhwc_u8) {
            t.bytes[((k * h + static_cast<size_t>(y)) * w + static_cast<size_t>(x)) * 3 + c] = static_cast<uint8_t>(v);
            continue;
          }
          const size_t at = ((k * 3 + c) * h + static_cast<size_t>(y)) * w + static_cast<size_t>(x);
          if (t.dtype == DType::kFloat16) {
            reinterpret_cast<uint16_t*>(t.bytes.data())[at] = float_to_half(v);
          } else {
            reinterpret_cast<float*>(t.bytes.data())[at] = v;
          }
        }
      }
    }
    ++k;
  }
  return t;
}

Result<const FloatTensor*> find_output(const Outputs& outs, const std::string& name) {
  auto it = outs.find(name);
  if (it == outs.end()) return Status::error("the graph has no output '" + name + "'");
  return &it->second;
}

Result<WindowOutputs> run_windows(const Manifest& m, Backend& backend, const Planes& p,
                                  const std::vector<Window>& windows, int batch, const std::string& output,
                                  PlanesHold holds, int* windows_run) {
  WindowOutputs out;
  for (size_t start = 0; start < windows.size(); start += static_cast<size_t>(batch)) {
    const size_t end = std::min(windows.size(), start + static_cast<size_t>(batch));
    const std::vector<Window> chunk(windows.begin() + static_cast<long>(start), windows.begin() + static_cast<long>(end));
    Result<HostTensor> in = make_input(m, p, chunk, holds);
    if (!in.ok()) return in.status();
    Outputs outs;
    Status st = backend.run(in.value(), &outs);
    if (!st.ok()) return st;
    Result<const FloatTensor*> o = find_output(outs, output);
    if (!o.ok()) return o.status();
    const FloatTensor& t = *o.value();
    if (t.shape.size() != 4) return Status::error("output " + output + " is not [B, C, h, w]");
    out.classes = static_cast<int>(t.shape[1]);
    out.h = static_cast<int>(t.shape[2]);
    out.w = static_cast<int>(t.shape[3]);
    out.data.insert(out.data.end(), t.data.begin(), t.data.end());
    *windows_run += static_cast<int>(chunk.size());
  }
  return out;
}

}  // namespace dinov3_deploy

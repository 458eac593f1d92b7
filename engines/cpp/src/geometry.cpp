// The official window placement (reference/protocol/sliding_window.py window_geometry), line by line.
#include "dinov3_deploy/geometry.h"

#include <algorithm>
#include <string>

namespace dinov3_deploy {

int window_axis_start(int i, int size, int crop, int stride) {
  // window i ends at min(i*stride + crop, size) and starts crop before that, never before 0
  return std::max(std::min(i * stride + crop, size) - crop, 0);
}

std::vector<Window> WindowGeometry::windows() const {
  std::vector<Window> out;
  out.reserve(static_cast<size_t>(size()));
  for (int i = 0; i < n_rows; ++i) {
    int y0 = window_axis_start(i, image_h, crop_h, stride_h);
    for (int j = 0; j < n_cols; ++j) {
      int x0 = window_axis_start(j, image_w, crop_w, stride_w);
      out.push_back({y0, y0 + win_h, x0, x0 + win_w});
    }
  }
  return out;
}

Result<WindowGeometry> window_geometry(int h, int w, int crop_h, int crop_w, int stride_h, int stride_w) {
  if (h <= 0 || w <= 0)
    return Status::error("image size must be positive, got " + std::to_string(h) + "x" + std::to_string(w));
  int ch = crop_h, cw = crop_w;
  if (ch > h && cw > w) ch = cw = std::min(h, w);  // larger on both axes: a square crop of the shorter side
  if (std::min({ch, cw, stride_h, stride_w}) <= 0) return Status::error("crop and stride must be positive");
  WindowGeometry g;
  g.image_h = h;
  g.image_w = w;
  g.crop_h = ch;
  g.crop_w = cw;
  g.stride_h = std::min(stride_h, ch);
  g.stride_w = std::min(stride_w, cw);
  g.n_rows = std::max(h - ch + g.stride_h - 1, 0) / g.stride_h + 1;
  g.n_cols = std::max(w - cw + g.stride_w - 1, 0) / g.stride_w + 1;
  g.win_h = std::min(ch, h);
  g.win_w = std::min(cw, w);
  return g;
}

}  // namespace dinov3_deploy

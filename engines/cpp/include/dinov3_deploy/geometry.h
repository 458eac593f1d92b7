// Window placement of the official sliding-window protocol: the same arithmetic as
// window_geometry / WindowGeometry in reference/protocol/sliding_window.py (a test compares both
// on a table of sizes), so the C++ runtime runs exactly the windows `infer` runs.
#pragma once

#include <vector>

#include "dinov3_deploy/status.h"

namespace dinov3_deploy {

struct Window {
  int y0, y1, x0, x1;  // end exclusive
};

struct WindowGeometry {
  int image_h = 0, image_w = 0;
  int crop_h = 0, crop_w = 0;      // effective crop
  int stride_h = 0, stride_w = 0;  // clamped to the crop
  int n_rows = 0, n_cols = 0;
  int win_h = 0, win_w = 0;        // min(crop, image side): every window's size

  int size() const { return n_rows * n_cols; }
  // Rows outer, columns inner (the official loop order).
  std::vector<Window> windows() const;
};

int window_axis_start(int i, int size, int crop, int stride);
Result<WindowGeometry> window_geometry(int h, int w, int crop_h, int crop_w, int stride_h, int stride_w);

}  // namespace dinov3_deploy

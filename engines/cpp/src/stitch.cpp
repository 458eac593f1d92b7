// The CPU stitch: slide_inference's canvas arithmetic in float32, in its order, then argmax.
#include "dinov3_deploy/stitch.h"

#include "dinov3_deploy/resize.h"

namespace dinov3_deploy {

Planes stitch_scores_cpu(const float* logits, int classes, int lh, int lw, const WindowGeometry& g, int out_h,
                         int out_w) {
  const int n = g.size(), H = g.image_h, W = g.image_w;
  Planes low{n * classes, lh, lw, std::vector<float>(logits, logits + static_cast<size_t>(n) * classes * lh * lw)};
  // all windows at once, as infer hands slide_inference the whole batch: [n, C, lh, lw] -> window size
  // (logits already at the window size, as M2F's scores, come through PyTorch's resize unchanged)
  const bool sized = lh == g.win_h && lw == g.win_w;
  const Planes up = sized ? std::move(low) : resize_bilinear(low, g.win_h, g.win_w, classes);
  Planes canvas{classes, H, W, std::vector<float>(static_cast<size_t>(classes) * H * W, 0.0f)};
  std::vector<float> count(static_cast<size_t>(H) * W, 0.0f);
  const std::vector<Window> windows = g.windows();
  for (int k = 0; k < n; ++k) {
    const Window& win = windows[static_cast<size_t>(k)];
    for (int c = 0; c < classes; ++c) {
      const float* src = up.plane(k * classes + c);
      float* dst = canvas.plane(c);
      for (int y = win.y0; y < win.y1; ++y)
        for (int x = win.x0; x < win.x1; ++x)
          dst[static_cast<size_t>(y) * W + x] += src[static_cast<size_t>(y - win.y0) * g.win_w + (x - win.x0)];
    }
    for (int y = win.y0; y < win.y1; ++y)
      for (int x = win.x0; x < win.x1; ++x) count[static_cast<size_t>(y) * W + x] += 1.0f;
  }
  for (int c = 0; c < classes; ++c) {
    float* p = canvas.plane(c);
    for (size_t i = 0; i < count.size(); ++i) p[i] = p[i] / count[i];
  }
  if (out_h == H && out_w == W) return canvas;
  return resize_bilinear(canvas, out_h, out_w, classes);
}

std::vector<int32_t> argmax_classes(const Planes& scores) {
  const size_t hw = static_cast<size_t>(scores.h) * scores.w;
  std::vector<int32_t> labels(hw, 0);
  for (size_t i = 0; i < hw; ++i) {
    float best = scores.plane(0)[i];
    int32_t arg = 0;
    for (int c = 1; c < scores.n; ++c) {
      const float v = scores.plane(c)[i];
      if (v > best) {  // strict: the first of equal maxima wins, as torch.argmax
        best = v;
        arg = c;
      }
    }
    labels[i] = arg;
  }
  return labels;
}

std::vector<int32_t> stitch_labels_cpu(const float* logits, int classes, int lh, int lw, const WindowGeometry& g,
                                       int out_h, int out_w) {
  return argmax_classes(stitch_scores_cpu(logits, classes, lh, lw, g, out_h, out_w));
}

}  // namespace dinov3_deploy

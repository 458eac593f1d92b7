// The Mask2Former protocol of `infer` in C++; m2f.h says which steps, in which order.
#include "dinov3_deploy/m2f.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "dinov3_deploy/geometry.h"
#include "dinov3_deploy/pil_resize.h"
#include "dinov3_deploy/softmax.h"
#include "dinov3_deploy/stitch.h"
#include "window_batches.h"

namespace dinov3_deploy {
namespace {

// transforms.normalize: (x - mean * 255) / (std * 255) in float32, planes [3][h][w]
Planes normalized(const Image& view, const Manifest& m) {
  const size_t hw = static_cast<size_t>(view.height) * view.width;
  Planes p{3, view.height, view.width, std::vector<float>(3 * hw)};
  for (size_t c = 0; c < 3; ++c) {
    const float mean = m.mean[c] * 255.0f, std = m.std[c] * 255.0f;
    for (size_t i = 0; i < hw; ++i) p.data[c * hw + i] = (static_cast<float>(view.rgb[3 * i + c]) - mean) / std;
  }
  return p;
}

Planes mirrored(const Planes& p) {
  Planes out = p;
  for (int i = 0; i < p.n; ++i)
    for (int y = 0; y < p.h; ++y) {
      float* row = out.plane(i) + static_cast<size_t>(y) * p.w;
      std::reverse(row, row + p.w);
    }
  return out;
}

// slide_inference over one view: the graph's scores averaged per pixel, resized to out_h x out_w.
Result<Planes> view_scores(const Manifest& m, Backend& backend, const Planes& view, const M2FOptions& o,
                           int stride, int out_h, int out_w, int* windows_run) {
  Result<WindowGeometry> g = window_geometry(view.h, view.w, o.window, o.window, stride, stride);
  if (!g.ok()) return g.status();
  const std::string name = m.output_name("seg", "scores");
  Result<WindowOutputs> scores = run_windows(m, backend, view, g.value().windows(), o.batch_windows, name,
                                             PlanesHold::kNormalized, windows_run);
  if (!scores.ok()) return scores.status();
  const WindowOutputs& s = scores.value();
  const Head* head = m.head_for("seg");
  if (head && head->n_classes && s.classes != head->n_classes)
    return Status::error("output " + name + " has " + std::to_string(s.classes) + " classes; the manifest says " +
                         std::to_string(head->n_classes));
  return stitch_scores_cpu(s.data.data(), s.classes, s.h, s.w, g.value(), out_h, out_w);
}

}  // namespace

bool is_m2f_artifact(const Manifest& m) {
  const Head* h = m.task == "multi" ? nullptr : m.head_for(m.task);
  return h && h->head_type == "m2f";
}

int m2f_stride(int window, int requested) {
  if (requested) return std::min(requested, window);
  return std::max(1, static_cast<int>(std::nearbyint(window * (596.0 / 896.0))));  // half to even, as round()
}

std::vector<int> tta_short_sides(int short_side, bool tta) {
  std::vector<int> sides;
  for (double r : kTtaRatios) {
    if (!tta && r != 1.0) continue;
    int s = static_cast<int>(short_side * r);
    if (r < 1.0) s = (s + kM2FSizeMultiple - 1) / kM2FSizeMultiple * kM2FSizeMultiple;
    sides.push_back(s);
  }
  return sides;
}

void m2f_view_size(int h, int w, int short_side, int* view_h, int* view_w) {
  const double f = std::min(static_cast<double>(4 * short_side) / std::max(h, w),
                            static_cast<double>(short_side) / std::min(h, w));
  *view_h = std::max(1, static_cast<int>(h * f + 0.5));
  *view_w = std::max(1, static_cast<int>(w * f + 0.5));
}

Status check_windows(int h, int w, int crop, int stride) {
  Result<WindowGeometry> g = window_geometry(h, w, crop, crop, stride, stride);
  if (!g.ok()) return g.status();
  const int wh = g.value().win_h, ww = g.value().win_w;
  if (wh % kM2FSizeMultiple == 0 && ww % kM2FSizeMultiple == 0) return Status();
  return Status::error("a " + std::to_string(h) + "x" + std::to_string(w) + " view gives " + std::to_string(wh) +
                       "x" + std::to_string(ww) + " windows with crop " + std::to_string(crop) +
                       ": the segmentor needs multiples of " + std::to_string(kM2FSizeMultiple) +
                       " (use a crop that is one, and a short side >= the crop)");
}

Result<Planes> m2f_probabilities(const Manifest& m, Backend& backend, const Image& image, const M2FOptions& o,
                                 int* windows_run) {
  if (m.uint8_input())
    return Status::error("a Mask2Former artifact with --uint8-input cannot run the M2F protocol here");
  const int stride = m2f_stride(o.window, o.stride);
  Planes total;
  for (int side : tta_short_sides(o.window, o.tta)) {
    int vh = 0, vw = 0;
    m2f_view_size(image.height, image.width, side, &vh, &vw);
    const Planes view = normalized(resize_pil_bilinear(image, vh, vw), m);
    Status st = check_windows(vh, vw, o.window, stride);
    if (!st.ok()) return st;
    for (bool flip : {false, true}) {
      if (flip && !o.tta) break;
      Result<Planes> s = view_scores(m, backend, flip ? mirrored(view) : view, o, stride, image.height, image.width,
                                     windows_run);
      if (!s.ok()) return s.status();
      Planes probs = flip ? mirrored(s.value()) : std::move(s.value());
      softmax_classes(&probs);
      if (total.data.empty()) {
        total = std::move(probs);
      } else {
        for (size_t i = 0; i < total.data.size(); ++i) total.data[i] += probs.data[i];
      }
    }
  }
  return total;
}

Result<std::vector<int32_t>> m2f_labels(const Manifest& m, Backend& backend, const Image& image,
                                        const M2FOptions& o, int* windows_run) {
  Result<Planes> probs = m2f_probabilities(m, backend, image, o, windows_run);
  if (!probs.ok()) return probs.status();
  return argmax_classes(probs.value());
}

}  // namespace dinov3_deploy

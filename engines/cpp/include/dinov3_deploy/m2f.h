// Mask2Former artifacts (manifest head_type "m2f") by the release's protocol, as `infer` runs them
// (runtime/m2f_prediction.py, reference/protocol/m2f.py): one view per TTA ratio, the uint8 image
// resized by PIL (pil_resize.h) so its short side is the window times the ratio (rounded up to a
// multiple of 32 below 1.0), normalised; the sliding window over each view (and, with TTA, its
// mirror); the graph's `scores` output averaged per pixel over the windows (stitch.h), resized to the
// image, mirrored back, softmaxed over the classes; the views' probabilities summed; argmax.
// Window: the artifact's (or the requested) window; stride: the requested one (clamped to the
// window), else the release's 596/896 of the window.
#pragma once

#include <cstdint>
#include <vector>

#include "dinov3_deploy/backend.h"
#include "dinov3_deploy/image.h"
#include "dinov3_deploy/manifest.h"
#include "dinov3_deploy/resize.h"
#include "dinov3_deploy/status.h"

namespace dinov3_deploy {

inline constexpr double kTtaRatios[] = {0.9, 0.95, 1.0, 1.05, 1.1};  // the release's
inline constexpr int kM2FSizeMultiple = 32;                            // the segmentor's input rule

bool is_m2f_artifact(const Manifest& m);
// The requested stride clamped to the window, else round(window * 596 / 896) (Python's round).
int m2f_stride(int window, int requested);
// Each view's short side: int(window * ratio), rounded up to a multiple of 32 for ratios below 1.
std::vector<int> tta_short_sides(int short_side, bool tta);
// The view of an h x w image with short side `short_side` (the long side at most 4x, mmseg's rule).
void m2f_view_size(int h, int w, int short_side, int* view_h, int* view_w);
// The protocol's refusal of a view whose windows are not multiples of 32, in Python's words.
Status check_windows(int h, int w, int crop, int stride);

struct M2FOptions {
  int window = 0, stride = 0, batch_windows = 1;  // window and batch already resolved
  bool tta = false;
};

// [C][H][W] the class probabilities of `image` summed over the views (their mean's argmax is the label);
// `*windows_run` counts the graph's windows.
Result<Planes> m2f_probabilities(const Manifest& m, Backend& backend, const Image& image, const M2FOptions& options,
                                 int* windows_run);
// Labels [H][W] of `image`: the argmax of m2f_probabilities.
Result<std::vector<int32_t>> m2f_labels(const Manifest& m, Backend& backend, const Image& image,
                                        const M2FOptions& options, int* windows_run);

}  // namespace dinov3_deploy

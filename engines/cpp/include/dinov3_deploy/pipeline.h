// One image through a Backend, as `dinov3-deploy infer` does it (runtime/inference.py
// predict_image): seg by the sliding window on the image resized (short side = the window),
// labels at the image size (a Mask2Former artifact: the release's M2F protocol, m2f.h); depth, cls and features from one pass over the whole image resized to
// a valid input; a multi-head artifact does both, each task from its named output.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dinov3_deploy/backend.h"
#include "dinov3_deploy/image.h"
#include "dinov3_deploy/manifest.h"
#include "dinov3_deploy/resize.h"

namespace dinov3_deploy {

struct PipelineOptions {
  int window = 0;         // 0: the artifact's opt size
  int stride = 0;         // 0: max(multiple, 2/3 of the window)
  int batch_windows = 0;  // 0: up to 4, within the batch range
  bool gpu_stitch = false;
  bool tta = false;       // Mask2Former artifacts: the release's TTA ratios and mirrors (m2f.h)
};

struct Prediction {
  std::vector<std::string> tasks;
  std::vector<uint8_t> labels;  // seg: HxW class ids (as uint8, like infer's PNG)
  std::vector<float> depth;     // depth: HxW
  std::vector<float> logits;    // cls: [C]
  std::vector<float> patch;     // features: [gh][gw][D] (or [N][D] when not a grid)
  std::vector<int64_t> patch_shape;
  int windows_run = 0;
};

// The window size: requested, else min(opt H, opt W); must be an input the artifact accepts.
Result<int> window_size(const ShapeRanges& shapes, int requested);
Result<int> batch_windows_of(const ShapeRanges& shapes, int requested);

class Pipeline {
 public:
  Pipeline(const Manifest& manifest, Backend& backend, PipelineOptions options);
  Result<Prediction> predict(const Image& image);

 private:
  // seg labels into pred: the sliding window of the linear head, or the M2F protocol
  Status predict_labels(const Image& image, const Planes& pixels, int size, Prediction* pred);

  const Manifest& manifest_;
  Backend& backend_;
  PipelineOptions options_;
};

}  // namespace dinov3_deploy

// Windows of an image through the Backend in batches, shared by the linear head's sliding window
// (pipeline.cpp) and the Mask2Former protocol (m2f.cpp): the graph input made from float planes,
// one named output gathered for every window in the geometry's row-major order.
#pragma once

#include <string>
#include <vector>

#include "dinov3_deploy/backend.h"
#include "dinov3_deploy/geometry.h"
#include "dinov3_deploy/manifest.h"
#include "dinov3_deploy/resize.h"

namespace dinov3_deploy {

// How the planes map to the graph input.
enum class PlanesHold {
  kPixels,      // 0..255 values: Predictor.to_input (round, clamp, uint8 NHWC or (x / 255 - mean) / std)
  kNormalized,  // values already normalised (the M2F views): copied as they are (float16 if the graph takes it)
};

Result<HostTensor> make_input(const Manifest& m, const Planes& p, const std::vector<Window>& crops, PlanesHold holds);

Result<const FloatTensor*> find_output(const Outputs& outs, const std::string& name);

// One output, [n windows][C][h][w] in `data`, its per-window shape in c/h/w.
struct WindowOutputs {
  std::vector<float> data;
  int classes = 0, h = 0, w = 0;
};

// Every window of `p` through the backend, `batch` windows per call; `*windows_run` counts them.
Result<WindowOutputs> run_windows(const Manifest& m, Backend& backend, const Planes& p,
                                  const std::vector<Window>& windows, int batch, const std::string& output,
                                  PlanesHold holds, int* windows_run);

}  // namespace dinov3_deploy

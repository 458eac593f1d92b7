// TensorRT: the artifact's serialised engine, deserialised and run with enqueueV3 on a CUDA stream
// the caller may give. The optimisation profile is picked from the manifest's ranges for each input
// shape; setInputShape's answer is checked; one CUDA graph per input shape is captured on request.
// Built only with -DDINOV3_WITH_TENSORRT=ON (make_tensorrt_backend then exists; without it the
// function still links and says the build has no TensorRT).
#pragma once

#include <memory>
#include <string>

#include "dinov3_deploy/backend.h"
#include "dinov3_deploy/manifest.h"

namespace dinov3_deploy {

struct TensorRTOptions {
  void* stream = nullptr;   // a cudaStream_t of the caller; null: the backend makes its own
  bool cuda_graphs = false; // capture one CUDA graph per input shape and replay it
  int device = 0;
};

bool tensorrt_built();
Result<std::unique_ptr<Backend>> make_tensorrt_backend(const Manifest& manifest, const TensorRTOptions& options);

}  // namespace dinov3_deploy

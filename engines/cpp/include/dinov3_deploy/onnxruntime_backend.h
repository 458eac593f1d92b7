// ONNX Runtime through its C++ API. provider: "cpu", "cuda" or "tensorrt". A GPU provider that
// this onnxruntime build lacks, or that cannot take every node, is an error: ONNX Runtime would
// otherwise fall back to the CPU with only a log line, as the Python side refuses too.
#pragma once

#include <memory>
#include <string>

#include "dinov3_deploy/backend.h"
#include "dinov3_deploy/manifest.h"

namespace dinov3_deploy {

Result<std::unique_ptr<Backend>> make_onnxruntime_backend(const Manifest& manifest, const std::string& provider);

}  // namespace dinov3_deploy

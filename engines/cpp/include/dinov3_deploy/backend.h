// The Backend interface: one model call on a batch of inputs, outputs back on the host as float.
// Two implementations: ONNX Runtime (onnxruntime_backend.h, always built) and TensorRT
// (tensorrt_backend.h, built with -DDINOV3_WITH_TENSORRT=ON).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dinov3_deploy/status.h"

namespace dinov3_deploy {

enum class DType { kFloat32, kFloat16, kUInt8, kInt32, kInt64 };

// The manifest's dtype name ("float32", "float16", "uint8", ...); an unknown name is an error.
Result<DType> dtype_from_name(const std::string& name);
size_t dtype_size(DType dtype);

// A host tensor in the input's own dtype (what the graph takes: normalised float or uint8 NHWC).
struct HostTensor {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  int64_t count() const;
};

// An output converted to float32 on the host.
struct FloatTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

using Outputs = std::map<std::string, FloatTensor>;

class Backend {
 public:
  virtual ~Backend() = default;
  // "onnxruntime-cpu", "tensorrt", ...: what `infer` would call it.
  virtual std::string name() const = 0;
  // Runs the graph on `input` (its shape within the manifest's ranges) and fills every output.
  virtual Status run(const HostTensor& input, Outputs* outputs) = 0;
};

float half_to_float(uint16_t h);
uint16_t float_to_half(float f);  // round to nearest even, as numpy and PyTorch

}  // namespace dinov3_deploy

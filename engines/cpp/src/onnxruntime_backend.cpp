// ONNX Runtime backend (C++ API). Session options are ONNX Runtime's defaults, as the Python
// predictor uses them: the same kernels and thread count give the same logits bit for bit.
#include "dinov3_deploy/onnxruntime_backend.h"

#include <algorithm>
#include <cstring>

#include <onnxruntime_cxx_api.h>
#include <onnxruntime_session_options_config_keys.h>

namespace dinov3_deploy {
namespace {

ONNXTensorElementDataType ort_type(DType d) {
  switch (d) {
    case DType::kFloat32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case DType::kFloat16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case DType::kUInt8: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    case DType::kInt32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case DType::kInt64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

Status to_float(const Ort::Value& v, FloatTensor* out) {
  auto info = v.GetTensorTypeAndShapeInfo();
  out->shape = info.GetShape();
  const size_t n = info.GetElementCount();
  out->data.resize(n);
  switch (info.GetElementType()) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
      std::memcpy(out->data.data(), v.GetTensorData<float>(), n * sizeof(float));
      return Status();
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: {
      const auto* h = reinterpret_cast<const uint16_t*>(v.GetTensorData<Ort::Float16_t>());
      for (size_t i = 0; i < n; ++i) out->data[i] = half_to_float(h[i]);
      return Status();
    }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: {
      const int64_t* p = v.GetTensorData<int64_t>();
      for (size_t i = 0; i < n; ++i) out->data[i] = static_cast<float>(p[i]);
      return Status();
    }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: {
      const int32_t* p = v.GetTensorData<int32_t>();
      for (size_t i = 0; i < n; ++i) out->data[i] = static_cast<float>(p[i]);
      return Status();
    }
    default:
      return Status::error("an output has an element type the C++ runtime does not convert");
  }
}

class OrtBackend final : public Backend {
 public:
  OrtBackend(std::string name, Ort::Env env, Ort::Session session)
      : name_(std::move(name)), env_(std::move(env)), session_(std::move(session)) {
    Ort::AllocatorWithDefaultOptions alloc;
    input_name_ = session_.GetInputNameAllocated(0, alloc).get();
    for (size_t i = 0; i < session_.GetOutputCount(); ++i)
      output_names_.emplace_back(session_.GetOutputNameAllocated(i, alloc).get());
  }

  std::string name() const override { return name_; }

  Status run(const HostTensor& input, Outputs* outputs) override {
    try {
      Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
      Ort::Value x = Ort::Value::CreateTensor(mem, const_cast<uint8_t*>(input.bytes.data()), input.bytes.size(),
                                              input.shape.data(), input.shape.size(), ort_type(input.dtype));
      const char* in_names[] = {input_name_.c_str()};
      std::vector<const char*> out_names;
      for (const auto& n : output_names_) out_names.push_back(n.c_str());
      std::vector<Ort::Value> outs = session_.Run(Ort::RunOptions{nullptr}, in_names, &x, 1, out_names.data(),
                                                  out_names.size());
      outputs->clear();
      for (size_t i = 0; i < outs.size(); ++i) {
        Status st = to_float(outs[i], &(*outputs)[output_names_[i]]);
        if (!st.ok()) return st;
      }
      return Status();
    } catch (const Ort::Exception& e) {
      return Status::error(std::string("ONNX Runtime: ") + e.what());
    }
  }

 private:
  std::string name_;
  Ort::Env env_;
  Ort::Session session_;
  std::string input_name_;
  std::vector<std::string> output_names_;
};

}  // namespace

Result<std::unique_ptr<Backend>> make_onnxruntime_backend(const Manifest& m, const std::string& provider) {
  static const char* kNames[][2] = {{"cpu", "CPUExecutionProvider"},
                                    {"cuda", "CUDAExecutionProvider"},
                                    {"tensorrt", "TensorrtExecutionProvider"}};
  std::string ep;
  for (const auto& n : kNames)
    if (provider == n[0]) ep = n[1];
  if (ep.empty()) return Status::error("--backend onnxruntime-" + provider + ": providers are cpu, cuda, tensorrt");
  try {
    const std::vector<std::string> have = Ort::GetAvailableProviders();
    if (std::find(have.begin(), have.end(), ep) == have.end())
      return Status::error("--backend onnxruntime-" + provider + " cannot run here: " + ep +
                           " is not in this onnxruntime build");
    Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "dinov3-deploy-cpp");
    Ort::SessionOptions opts;
    if (provider == "cuda") {
      OrtCUDAProviderOptions cuda{};
      opts.AppendExecutionProvider_CUDA(cuda);
    } else if (provider == "tensorrt") {
      OrtTensorRTProviderOptions trt{};
      opts.AppendExecutionProvider_TensorRT(trt);
    }
    if (provider != "cpu") {
      // A node the GPU provider cannot take, or a provider that fails to start, is an error here,
      // not a quiet run on the CPU under a GPU name.
      opts.AddConfigEntry(kOrtSessionOptionsDisableCPUEPFallback, "1");
    }
    const std::string path = m.root + "/" + m.onnx_file;
    Ort::Session session(env, path.c_str(), opts);
    return std::unique_ptr<Backend>(new OrtBackend("onnxruntime-" + provider, std::move(env), std::move(session)));
  } catch (const Ort::Exception& e) {
    return Status::error("onnxruntime-" + provider + ": ONNX Runtime could not start (" + e.what() + ")");
  }
}

}  // namespace dinov3_deploy

// TensorRT backend: deserialise, pick the profile from the manifest's ranges, setInputShape
// (checked), setTensorAddress, enqueueV3 on the caller's stream, one CUDA graph per input shape.
// Every TensorRT object has one owner (std::unique_ptr: TensorRT 10 objects are deleted with delete).
#include "dinov3_deploy/tensorrt_backend.h"

#include <fstream>
#include <iterator>
#include <map>
#include <sstream>

#include <NvInferRuntime.h>

#include "cuda_util.h"

namespace dinov3_deploy {
namespace {

class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kERROR) last_error = msg;
  }
  std::string last_error;
};

std::string dims_text(const std::vector<int64_t>& d) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < d.size(); ++i) s << (i ? ", " : "") << d[i];
  s << "]";
  return s.str();
}

Result<DType> dtype_of(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT: return DType::kFloat32;
    case nvinfer1::DataType::kHALF: return DType::kFloat16;
    case nvinfer1::DataType::kUINT8: return DType::kUInt8;
    case nvinfer1::DataType::kINT32: return DType::kInt32;
    case nvinfer1::DataType::kINT64: return DType::kInt64;
    default: return Status::error("an engine tensor has a data type the C++ runtime does not handle");
  }
}

struct IoTensor {
  std::string name;
  bool input = false;
  DType dtype = DType::kFloat32;
  DeviceBuffer device;
  std::vector<uint8_t> host;  // outputs: the bytes copied back
  std::vector<int64_t> shape;
};

class TensorRTBackend final : public Backend {
 public:
  std::string name() const override { return "tensorrt"; }

  Status init(const Manifest& m, const TensorRTOptions& options) {
    if (!m.tensorrt)
      return Status::error(m.root + " has no TensorRT engine (export it with --format onnx,trt on a GPU machine)");
    facts_ = *m.tensorrt;
    graphs_enabled_ = options.cuda_graphs;
    Status st = cuda_check(cudaSetDevice(options.device), "cudaSetDevice");
    if (st.ok()) st = stream_.init(options.stream);
    if (!st.ok()) return st;
    const std::string path = m.root + "/" + facts_.file;
    std::ifstream in(path, std::ios::binary);
    if (!in) return Status::error("the engine " + path + " is missing; re-export the artifact");
    const std::string blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) return Status::error("TensorRT: cannot create a runtime (" + logger_.last_error + ")");
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_)
      return Status::error("TensorRT cannot load " + path + " (" + logger_.last_error +
                           "): built by another TensorRT version or for another GPU; rebuild it here");
    context_.reset(engine_->createExecutionContext());
    if (!context_) return Status::error("TensorRT: cannot create an execution context (" + logger_.last_error + ")");
    for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
      auto t = std::make_unique<IoTensor>();
      t->name = engine_->getIOTensorName(i);
      t->input = engine_->getTensorIOMode(t->name.c_str()) == nvinfer1::TensorIOMode::kINPUT;
      Result<DType> dt = dtype_of(engine_->getTensorDataType(t->name.c_str()));
      if (!dt.ok()) return dt.status();
      t->dtype = dt.value();
      tensors_.push_back(std::move(t));
    }
    return Status();
  }

  Status run(const HostTensor& input, Outputs* outputs) override {
    IoTensor* in = nullptr;
    for (auto& t : tensors_)
      if (t->input) in = t.get();
    if (!in) return Status::error("the engine has no input");
    Status st = select_profile(in->name, input.shape);
    if (!st.ok()) return st;
    nvinfer1::Dims dims{};
    dims.nbDims = static_cast<int32_t>(input.shape.size());
    for (size_t i = 0; i < input.shape.size(); ++i) dims.d[i] = input.shape[i];
    if (!context_->setInputShape(in->name.c_str(), dims))
      return Status::error("TensorRT refused input shape " + dims_text(input.shape) + " for " + in->name + " (" +
                           logger_.last_error + ")");
    bool moved = false;
    for (auto& t : tensors_) {
      const nvinfer1::Dims d = context_->getTensorShape(t->name.c_str());
      t->shape.assign(d.d, d.d + d.nbDims);
      size_t n = 1;
      for (int64_t v : t->shape) n *= static_cast<size_t>(v);
      bool m = false;
      st = t->device.reserve(n * dtype_size(t->dtype), &m);
      if (!st.ok()) return st;
      moved |= m;
      if (!context_->setTensorAddress(t->name.c_str(), t->device.get()))
        return Status::error("TensorRT: setTensorAddress failed for " + t->name);
    }
    if (moved) graphs_.clear();  // captured graphs hold the old addresses
    st = upload(*in, input);
    if (!st.ok()) return st;
    st = enqueue(dims_text(input.shape));
    if (!st.ok()) return st;
    for (auto& t : tensors_) {
      if (t->input) continue;
      t->host.resize(t->device.get() ? volume(t->shape) * dtype_size(t->dtype) : 0);
      st = cuda_check(cudaMemcpyAsync(t->host.data(), t->device.get(), t->host.size(), cudaMemcpyDeviceToHost,
                                      stream_.get()), "cudaMemcpyAsync (output)");
      if (!st.ok()) return st;
    }
    st = cuda_check(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize");
    if (!st.ok()) return st;
    outputs->clear();
    for (auto& t : tensors_)
      if (!t->input) to_float(*t, &(*outputs)[t->name]);
    return Status();
  }

 private:
  static size_t volume(const std::vector<int64_t>& s) {
    size_t n = 1;
    for (int64_t v : s) n *= static_cast<size_t>(v);
    return n;
  }

  // The first profile of the manifest whose [min, max] holds `shape` (the engine was built with the
  // manifest's profiles, in this order).
  Status select_profile(const std::string& input, const std::vector<int64_t>& shape) {
    for (size_t p = 0; p < facts_.profiles.size(); ++p) {
      const EngineProfile& prof = facts_.profiles[p];
      if (prof.input != input || prof.min.size() != shape.size()) continue;
      bool fits = true;
      for (size_t i = 0; i < shape.size(); ++i) fits &= prof.min[i] <= shape[i] && shape[i] <= prof.max[i];
      if (!fits) continue;
      if (static_cast<int>(p) != profile_) {
        if (static_cast<int>(p) >= engine_->getNbOptimizationProfiles())
          return Status::error("the manifest lists more profiles than the engine has; re-export the artifact");
        if (!context_->setOptimizationProfileAsync(static_cast<int32_t>(p), stream_.get()))
          return Status::error("TensorRT: cannot select optimisation profile " + std::to_string(p));
        profile_ = static_cast<int>(p);
        graphs_.clear();
      }
      return Status();
    }
    std::string ranges;
    for (const auto& prof : facts_.profiles) ranges += (ranges.empty() ? "" : "; ") + dims_text(prof.min) + ".." +
                                                       dims_text(prof.max);
    return Status::error("input shape " + dims_text(shape) + " is outside the engine's ranges (" + ranges + ")");
  }

  Status upload(IoTensor& in, const HostTensor& x) {
    staging_ = x.bytes;
    if (x.dtype != in.dtype) {  // float32 <-> float16 only: the manifest and the engine agree otherwise
      if (x.dtype != DType::kFloat32 || in.dtype != DType::kFloat16)
        return Status::error("the input's dtype does not match the engine's");
      staging_.resize(static_cast<size_t>(x.count()) * 2);
      const auto* f = reinterpret_cast<const float*>(x.bytes.data());
      auto* h = reinterpret_cast<uint16_t*>(staging_.data());
      for (int64_t i = 0; i < x.count(); ++i) h[i] = float_to_half(f[i]);
    }
    return cuda_check(cudaMemcpyAsync(in.device.get(), staging_.data(), staging_.size(), cudaMemcpyHostToDevice,
                                      stream_.get()), "cudaMemcpyAsync (input)");
  }

  // enqueueV3, or (with CUDA graphs) the graph captured for this shape: captured on the shape's
  // first run, replayed after.
  Status enqueue(const std::string& shape_key) {
    if (!graphs_enabled_) {
      return context_->enqueueV3(stream_.get()) ? Status()
                                                : Status::error("TensorRT enqueueV3 failed (" + logger_.last_error + ")");
    }
    auto it = graphs_.find(shape_key);
    if (it == graphs_.end()) {
      // one eager run first: TensorRT may allocate or tune on a shape's first call, which a capture forbids
      if (!context_->enqueueV3(stream_.get())) return Status::error("TensorRT enqueueV3 failed (" + logger_.last_error + ")");
      auto g = std::make_unique<GraphExec>();
      Status st = cuda_check(cudaStreamBeginCapture(stream_.get(), cudaStreamCaptureModeThreadLocal), "capture");
      if (!st.ok()) return st;
      const bool ok = context_->enqueueV3(stream_.get());
      st = cuda_check(cudaStreamEndCapture(stream_.get(), g->graph()), "cudaStreamEndCapture");
      if (!ok || !st.ok()) return ok ? st : Status::error("TensorRT enqueueV3 failed during CUDA graph capture");
      st = cuda_check(cudaGraphInstantiate(g->exec(), *g->graph(), 0), "cudaGraphInstantiate");
      if (!st.ok()) return st;
      graphs_[shape_key] = std::move(g);
      return Status();  // the eager run above already computed this call's outputs
    }
    return cuda_check(cudaGraphLaunch(*it->second->exec(), stream_.get()), "cudaGraphLaunch");
  }

  static void to_float(const IoTensor& t, FloatTensor* out) {
    out->shape = t.shape;
    const size_t n = volume(t.shape);
    out->data.resize(n);
    for (size_t i = 0; i < n; ++i) {
      switch (t.dtype) {
        case DType::kFloat32: out->data[i] = reinterpret_cast<const float*>(t.host.data())[i]; break;
        case DType::kFloat16: out->data[i] = half_to_float(reinterpret_cast<const uint16_t*>(t.host.data())[i]); break;
        case DType::kInt32: out->data[i] = static_cast<float>(reinterpret_cast<const int32_t*>(t.host.data())[i]); break;
        case DType::kInt64: out->data[i] = static_cast<float>(reinterpret_cast<const int64_t*>(t.host.data())[i]); break;
        case DType::kUInt8: out->data[i] = t.host[i]; break;
      }
    }
  }

  Logger logger_;
  // declaration order = destruction in reverse: context before engine before runtime
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  TensorRTFacts facts_;
  Stream stream_;
  std::vector<std::unique_ptr<IoTensor>> tensors_;
  std::map<std::string, std::unique_ptr<GraphExec>> graphs_;
  std::vector<uint8_t> staging_;
  int profile_ = 0;
  bool graphs_enabled_ = false;
};

}  // namespace

bool tensorrt_built() { return true; }

Result<std::unique_ptr<Backend>> make_tensorrt_backend(const Manifest& manifest, const TensorRTOptions& options) {
  auto backend = std::make_unique<TensorRTBackend>();
  Status st = backend->init(manifest, options);
  if (!st.ok()) return st;
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace dinov3_deploy

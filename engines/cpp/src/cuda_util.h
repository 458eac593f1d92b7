// RAII owners of CUDA runtime objects (device memory, stream, graph) and the check that turns a
// cudaError_t into a Status: shared by the TensorRT backend and the GPU stitch.
#pragma once

#include <cstddef>
#include <string>

#include <cuda_runtime_api.h>

#include "dinov3_deploy/status.h"

namespace dinov3_deploy {

inline Status cuda_check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status();
  return Status::error(std::string(what) + ": " + cudaGetErrorString(err));
}

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }
  // Grows to at least `bytes` (contents not kept); *moved says whether the address changed.
  Status reserve(size_t bytes, bool* moved) {
    *moved = false;
    if (bytes <= bytes_) return Status();
    release();
    Status st = cuda_check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
    if (!st.ok()) return st;
    bytes_ = bytes;
    *moved = true;
    return Status();
  }
  void* get() const { return ptr_; }

 private:
  void release() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// The caller's stream, or one made (and destroyed) here.
class Stream {
 public:
  Stream() = default;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    if (owned_ && stream_) cudaStreamDestroy(stream_);
  }
  Status init(void* user_stream) {
    if (user_stream) {
      stream_ = static_cast<cudaStream_t>(user_stream);
      return Status();
    }
    owned_ = true;
    return cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
  bool owned_ = false;
};

class GraphExec {
 public:
  GraphExec() = default;
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  ~GraphExec() {
    if (exec_) cudaGraphExecDestroy(exec_);
    if (graph_) cudaGraphDestroy(graph_);
  }
  cudaGraph_t* graph() { return &graph_; }
  cudaGraphExec_t* exec() { return &exec_; }

 private:
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace dinov3_deploy

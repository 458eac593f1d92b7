// The GPU stitch: kernels/stitch.py's Triton kernel, compiled ahead of time (cmake/stitch_aot.cmake),
// launched through its generated C entry points with window_geometry's scalars.
#include <cuda.h>

#include "cuda_util.h"
#include "dinov3_deploy/stitch.h"
#include "dinov3_stitch_aot.h"

namespace dinov3_deploy {

bool cuda_stitch_built() { return true; }

Status stitch_labels_cuda(const float* logits, int classes, int lh, int lw, const WindowGeometry& g, int out_h,
                          int out_w, std::vector<int32_t>* labels, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  const size_t in_bytes = static_cast<size_t>(g.size()) * classes * lh * lw * sizeof(float);
  const size_t out_bytes = static_cast<size_t>(out_h) * out_w * sizeof(int32_t);
  DeviceBuffer d_logits, d_labels;
  bool moved = false;
  Status st = d_logits.reserve(in_bytes, &moved);
  if (st.ok()) st = d_labels.reserve(out_bytes, &moved);
  if (st.ok()) st = cuda_check(cudaMemcpyAsync(d_logits.get(), logits, in_bytes, cudaMemcpyHostToDevice, s), "copy");
  if (!st.ok()) return st;
  const bool resize = out_h != g.image_h || out_w != g.image_w;
  const auto launch = resize ? dinov3_stitch_resize : dinov3_stitch_same;
  const CUresult r = launch(reinterpret_cast<CUstream>(s), reinterpret_cast<CUdeviceptr>(d_logits.get()), g.image_h,
                            g.image_w, classes, lh, lw, g.crop_h, g.crop_w, g.stride_h, g.stride_w, g.n_rows,
                            g.n_cols, g.win_h, g.win_w, out_h, out_w, reinterpret_cast<CUdeviceptr>(d_labels.get()),
                            CUdeviceptr{0});
  if (r != CUDA_SUCCESS) {
    const char* why = nullptr;
    cuGetErrorString(r, &why);
    return Status::error(std::string("the AOT stitch kernel did not launch: ") + (why ? why : "unknown error"));
  }
  labels->resize(static_cast<size_t>(out_h) * out_w);
  st = cuda_check(cudaMemcpyAsync(labels->data(), d_labels.get(), out_bytes, cudaMemcpyDeviceToHost, s), "copy");
  return st.ok() ? cuda_check(cudaStreamSynchronize(s), "cudaStreamSynchronize") : st;
}

}  // namespace dinov3_deploy

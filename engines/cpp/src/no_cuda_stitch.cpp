// Stand-in when the build has no CUDA stitch (-DDINOV3_WITH_CUDA=OFF).
#include "dinov3_deploy/stitch.h"

namespace dinov3_deploy {

bool cuda_stitch_built() { return false; }

Status stitch_labels_cuda(const float*, int, int, int, const WindowGeometry&, int, int, std::vector<int32_t>*, void*) {
  return Status::error("this build has no CUDA stitch (configure with -DDINOV3_WITH_CUDA=ON)");
}

}  // namespace dinov3_deploy

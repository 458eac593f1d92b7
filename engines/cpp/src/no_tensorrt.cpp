// Stand-ins when the build has no TensorRT (-DDINOV3_WITH_TENSORRT=OFF): the API links and says why.
#include "dinov3_deploy/tensorrt_backend.h"

namespace dinov3_deploy {

bool tensorrt_built() { return false; }

Result<std::unique_ptr<Backend>> make_tensorrt_backend(const Manifest&, const TensorRTOptions&) {
  return Status::error("--backend tensorrt: this dinov3-deploy-cpp was built without TensorRT (configure with "
                       "-DDINOV3_WITH_TENSORRT=ON on a machine with TensorRT)");
}

}  // namespace dinov3_deploy

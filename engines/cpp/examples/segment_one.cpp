// Segment one image with the library: the example of docs/cpp.md (built with the project).
#include <cstdio>

#include "dinov3_deploy/image.h"
#include "dinov3_deploy/manifest.h"
#include "dinov3_deploy/onnxruntime_backend.h"
#include "dinov3_deploy/pipeline.h"

int main(int argc, char** argv) {
  namespace dd = dinov3_deploy;
  if (argc != 3) return std::fprintf(stderr, "usage: %s ARTIFACT IMAGE\n", argv[0]), 2;
  dd::Result<dd::Manifest> manifest = dd::read_manifest(argv[1]);  // schema and sha256 checked
  if (!manifest.ok()) return std::fprintf(stderr, "%s\n", manifest.status().message().c_str()), 2;
  auto backend = dd::make_onnxruntime_backend(manifest.value(), "cpu");
  if (!backend.ok()) return std::fprintf(stderr, "%s\n", backend.status().message().c_str()), 2;
  dd::Result<dd::Image> image = dd::read_rgb(argv[2]);
  if (!image.ok()) return std::fprintf(stderr, "%s\n", image.status().message().c_str()), 1;
  dd::Pipeline pipeline(manifest.value(), *backend.value(), dd::PipelineOptions{});
  dd::Result<dd::Prediction> pred = pipeline.predict(image.value());
  if (!pred.ok()) return std::fprintf(stderr, "%s\n", pred.status().message().c_str()), 1;
  size_t counts[256] = {};
  for (uint8_t label : pred.value().labels) ++counts[label];
  for (int c = 0; c < 256; ++c)
    if (counts[c]) std::printf("class %d: %zu pixels\n", c, counts[c]);
  return 0;
}

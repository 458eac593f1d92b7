// The files `infer` writes per image, under the same names (runtime/inference.py OUTPUT_SUFFIXES):
// NAME_labels.png and NAME_seg.png (seg), NAME_depth.npy and NAME_depth.png (depth),
// NAME_patch_tokens.npy and NAME_pca.png (features). Every file is written atomically (a temporary
// name, then rename), so an interrupted run leaves no truncated result.
#pragma once

#include <string>
#include <vector>

#include "dinov3_deploy/image.h"
#include "dinov3_deploy/manifest.h"
#include "dinov3_deploy/pipeline.h"

namespace dinov3_deploy {

std::vector<std::string> output_suffixes(const std::string& task);
// Writes every task's files for the image called `name` under out_dir; the JSON summary of the
// prediction (the fields predictions.json holds) goes to *summary_json.
Status save_prediction(const Prediction& pred, const Image& image, const std::string& name,
                       const std::string& out_dir, const Manifest& manifest, std::string* summary_json);
Status write_file_atomic(const std::string& path, const std::string& bytes);
std::string npy_bytes(const std::vector<float>& data, const std::vector<int64_t>& shape);
Result<std::string> png_bytes(const uint8_t* pixels, int height, int width, int channels);

}  // namespace dinov3_deploy

// Reading an image file as uint8 RGB with the rules of reference/protocol/images.py: grey repeated
// on three channels, alpha dropped (not composited), 16-bit grey scaled by (x + 128) / 257, EXIF
// orientation applied to JPEGs. Decoding is stb_image's: PNG and BMP decode to the same pixels as
// PIL; a JPEG may differ by a level here and there (another IDCT), see docs/cpp.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dinov3_deploy/status.h"

namespace dinov3_deploy {

struct Image {
  int height = 0, width = 0;
  std::vector<uint8_t> rgb;  // HxWx3, row-major
};

inline constexpr const char* kImageExtensions[] = {".png", ".jpg", ".jpeg", ".bmp", ".webp"};

// True for a file name with one of kImageExtensions (any case).
bool is_image_name(const std::string& path);
// The image at `path`; the error names the file and the reason ("cannot read image PATH: ...").
Result<Image> read_rgb(const std::string& path);

}  // namespace dinov3_deploy

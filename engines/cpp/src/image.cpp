// Image files -> uint8 RGB with stb_image, mapped to RGB by reference/protocol/images.py's rules.
#include "dinov3_deploy/image.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <iterator>
#include <memory>

#include "stb_image_impl.h"

namespace dinov3_deploy {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

uint32_t read_u(const std::string& b, size_t at, int n, bool little) {
  uint32_t v = 0;
  for (int i = 0; i < n; ++i) {
    uint32_t byte = static_cast<uint8_t>(b[at + static_cast<size_t>(i)]);
    v |= little ? byte << (8 * i) : byte << (8 * (n - 1 - i));
  }
  return v;
}

// The EXIF orientation (1..8) of a JPEG, 1 when it has none: a phone's portrait picture is stored
// sideways with this tag, and PIL's exif_transpose (which the Python reader calls) turns it upright.
int jpeg_orientation(const std::string& b) {
  if (b.size() < 4 || static_cast<uint8_t>(b[0]) != 0xFF || static_cast<uint8_t>(b[1]) != 0xD8) return 1;
  size_t at = 2;
  while (at + 4 <= b.size() && static_cast<uint8_t>(b[at]) == 0xFF) {
    uint8_t marker = static_cast<uint8_t>(b[at + 1]);
    size_t len = read_u(b, at + 2, 2, false);
    if (marker == 0xDA || len < 2 || at + 2 + len > b.size()) break;  // image data: no EXIF before it
    if (marker == 0xE1 && len > 14 && b.compare(at + 4, 6, std::string("Exif\0\0", 6)) == 0) {
      size_t tiff = at + 10;
      bool little = b[tiff] == 'I';
      size_t ifd = tiff + read_u(b, tiff + 4, 4, little);
      if (ifd + 2 > b.size()) return 1;
      size_t n = read_u(b, ifd, 2, little);
      for (size_t i = 0; i < n && ifd + 2 + 12 * (i + 1) <= b.size(); ++i) {
        size_t e = ifd + 2 + 12 * i;
        if (read_u(b, e, 2, little) == 0x0112) {
          int o = static_cast<int>(read_u(b, e + 8, 2, little));
          return o >= 1 && o <= 8 ? o : 1;
        }
      }
      return 1;
    }
    at += 2 + len;
  }
  return 1;
}

Image orient(const Image& in, int o) {
  if (o == 1) return in;
  const int h = in.height, w = in.width;
  const bool swap = o >= 5;
  Image out;
  out.height = swap ? w : h;
  out.width = swap ? h : w;
  out.rgb.resize(in.rgb.size());
  for (int r = 0; r < out.height; ++r) {
    for (int c = 0; c < out.width; ++c) {
      int sr = r, sc = c;  // the source pixel of out(r, c), PIL's transpose for each orientation
      switch (o) {
        case 2: sc = w - 1 - c; break;
        case 3: sr = h - 1 - r; sc = w - 1 - c; break;
        case 4: sr = h - 1 - r; break;
        case 5: sr = c; sc = r; break;
        case 6: sr = h - 1 - c; sc = r; break;
        case 7: sr = h - 1 - c; sc = w - 1 - r; break;
        case 8: sr = c; sc = w - 1 - r; break;
        default: break;
      }
      std::copy_n(&in.rgb[(static_cast<size_t>(sr) * w + sc) * 3], 3, &out.rgb[(static_cast<size_t>(r) * out.width + c) * 3]);
    }
  }
  return out;
}

struct StbFree {
  void operator()(void* p) const { stbi_image_free(p); }
};

}  // namespace

bool is_image_name(const std::string& path) {
  std::string p = lower(path);
  for (const char* ext : kImageExtensions) {
    std::string e(ext);
    if (p.size() >= e.size() && p.compare(p.size() - e.size(), e.size(), e) == 0) return true;
  }
  return false;
}

Result<Image> read_rgb(const std::string& path) {
  auto fail = [&](const std::string& why) { return Status::error("cannot read image " + path + ": " + why); };
  std::ifstream f(path, std::ios::binary);
  if (!f) return fail("no such file or not readable");
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int size = static_cast<int>(bytes.size());
  int w = 0, h = 0, n = 0;
  if (!stbi_info_from_memory(data, size, &w, &h, &n)) return fail(std::string("cannot identify image file (") +
                                                                   stbi_failure_reason() + ")");
  Image img;
  img.height = h;
  img.width = w;
  img.rgb.resize(static_cast<size_t>(h) * w * 3);
  const size_t pixels = static_cast<size_t>(h) * w;
  if (stbi_is_16_bit_from_memory(data, size) && n <= 2) {
    // 16-bit grey: scaled to 0..255 as (x + 128) / 257, not clipped (PIL's I;16 mode)
    std::unique_ptr<stbi_us, StbFree> px(stbi_load_16_from_memory(data, size, &w, &h, &n, 1));
    if (!px) return fail(stbi_failure_reason());
    for (size_t i = 0; i < pixels; ++i) {
      auto g = static_cast<uint8_t>((static_cast<uint32_t>(px.get()[i]) + 128) / 257);
      img.rgb[3 * i] = img.rgb[3 * i + 1] = img.rgb[3 * i + 2] = g;
    }
  } else {
    // 8-bit (a 16-bit colour PNG keeps each sample's high byte, as PIL); alpha dropped, not composited
    std::unique_ptr<stbi_uc, StbFree> px(stbi_load_from_memory(data, size, &w, &h, &n, 0));
    if (!px) return fail(stbi_failure_reason());
    for (size_t i = 0; i < pixels; ++i) {
      const stbi_uc* s = px.get() + i * static_cast<size_t>(n);
      bool grey = n <= 2;
      img.rgb[3 * i] = s[0];
      img.rgb[3 * i + 1] = grey ? s[0] : s[1];
      img.rgb[3 * i + 2] = grey ? s[0] : s[2];
    }
  }
  return orient(img, jpeg_orientation(bytes));
}

}  // namespace dinov3_deploy

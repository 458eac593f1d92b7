// dinov3-deploy-probe: one sub-command per library header, so the Python tests can hold each part
// to its Python counterpart (window geometry, PyTorch's and PIL's resize, the stitch, the M2F protocol's
// views and softmax, decoding, the manifest).
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dinov3_deploy/geometry.h"
#include "dinov3_deploy/image.h"
#include "dinov3_deploy/m2f.h"
#include "dinov3_deploy/manifest.h"
#include "dinov3_deploy/onnxruntime_backend.h"
#include "dinov3_deploy/outputs.h"
#include "dinov3_deploy/pil_resize.h"
#include "dinov3_deploy/resize.h"
#include "dinov3_deploy/sha256.h"
#include "dinov3_deploy/softmax.h"
#include "dinov3_deploy/stitch.h"

using namespace dinov3_deploy;  // NOLINT: a program, not a header

namespace {

int fail(const std::string& m) {
  std::cerr << "error: " << m << "\n";
  return 2;
}

template <class T>
std::vector<T> read_raw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<T> v(b.size() / sizeof(T));
  std::copy(b.begin(), b.begin() + static_cast<long>(v.size() * sizeof(T)), reinterpret_cast<char*>(v.data()));
  return v;
}

template <class T>
void write_raw(const std::string& path, const std::vector<T>& v) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
}

int arg(char** argv, int i) { return std::atoi(argv[i]); }

}  // namespace

int main(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "geometry" && argc == 8) {  // H W CROP_H CROP_W STRIDE_H STRIDE_W -> JSON
    Result<WindowGeometry> g = window_geometry(arg(argv, 2), arg(argv, 3), arg(argv, 4), arg(argv, 5), arg(argv, 6),
                                               arg(argv, 7));
    if (!g.ok()) return fail(g.status().message());
    const WindowGeometry& w = g.value();
    nlohmann::json j = {{"image_h", w.image_h}, {"image_w", w.image_w}, {"crop_h", w.crop_h}, {"crop_w", w.crop_w},
                        {"stride_h", w.stride_h}, {"stride_w", w.stride_w}, {"n_rows", w.n_rows},
                        {"n_cols", w.n_cols}, {"win_h", w.win_h}, {"win_w", w.win_w}};
    for (const Window& win : w.windows()) j["windows"].push_back({win.y0, win.y1, win.x0, win.x1});
    std::cout << j.dump() << "\n";
    return 0;
  }
  if (cmd == "resize" && argc == 10) {  // IN N C H W OH OW OUT: float32 [N*C][H][W] -> [N*C][OH][OW]
    Planes p{arg(argv, 3) * arg(argv, 4), arg(argv, 5), arg(argv, 6), read_raw<float>(argv[2])};
    write_raw(argv[9], resize_bilinear(p, arg(argv, 7), arg(argv, 8), arg(argv, 4)).data);
    return 0;
  }
  if (cmd == "stitch" && argc == 13) {  // LOGITS C LH LW H W CROP STRIDE OH OW OUT -> int32 labels
    Result<WindowGeometry> g = window_geometry(arg(argv, 6), arg(argv, 7), arg(argv, 8), arg(argv, 8), arg(argv, 9),
                                               arg(argv, 9));
    if (!g.ok()) return fail(g.status().message());
    const std::vector<float> logits = read_raw<float>(argv[2]);
    write_raw(argv[12], stitch_labels_cpu(logits.data(), arg(argv, 3), arg(argv, 4), arg(argv, 5), g.value(),
                                          arg(argv, 10), arg(argv, 11)));
    return 0;
  }
  if (cmd == "pil-resize" && argc == 8) {  // IN H W OH OW OUT: uint8 [H][W][3] -> [OH][OW][3], PIL's bilinear
    const Image img{arg(argv, 3), arg(argv, 4), read_raw<uint8_t>(argv[2])};
    write_raw(argv[7], resize_pil_bilinear(img, arg(argv, 5), arg(argv, 6)).rgb);
    return 0;
  }
  if (cmd == "softmax" && argc == 7) {  // IN C H W OUT: float32 [C][H][W] -> softmax over C
    Planes p{arg(argv, 3), arg(argv, 4), arg(argv, 5), read_raw<float>(argv[2])};
    softmax_classes(&p);
    write_raw(argv[6], p.data);
    return 0;
  }
  if (cmd == "m2f-plan" && argc == 7) {  // H W WINDOW STRIDE TTA -> JSON: the stride and each view's size
    const int window = arg(argv, 4), stride = m2f_stride(window, arg(argv, 5));
    nlohmann::json j = {{"stride", stride}, {"views", nlohmann::json::array()}};
    for (int side : tta_short_sides(window, arg(argv, 6) != 0)) {
      int vh = 0, vw = 0;
      m2f_view_size(arg(argv, 2), arg(argv, 3), side, &vh, &vw);
      const Status st = check_windows(vh, vw, window, stride);
      j["views"].push_back({{"side", side}, {"size", {vh, vw}}, {"error", st.ok() ? "" : st.message()}});
    }
    std::cout << j.dump() << "\n";
    return 0;
  }
  if (cmd == "m2f-probs" && argc == 9) {  // ARTIFACT IMAGE WINDOW STRIDE BATCH TTA OUT: float32 [C][H][W]
    Result<Manifest> m = read_manifest(argv[2]);
    if (!m.ok()) return fail(m.status().message());
    Result<Image> img = read_rgb(argv[3]);
    if (!img.ok()) return fail(img.status().message());
    auto backend = make_onnxruntime_backend(m.value(), "cpu");
    if (!backend.ok()) return fail(backend.status().message());
    int windows = 0;
    Result<Planes> p = m2f_probabilities(m.value(), *backend.value(), img.value(),
                                         M2FOptions{arg(argv, 4), arg(argv, 5), arg(argv, 6), arg(argv, 7) != 0}, &windows);
    if (!p.ok()) return fail(p.status().message());
    write_raw(argv[8], p.value().data);
    return 0;
  }
  if (cmd == "decode" && argc == 4) {  // IMAGE OUT.png: the RGB pixels the runtime reads
    Result<Image> img = read_rgb(argv[2]);
    if (!img.ok()) return fail(img.status().message());
    Result<std::string> png = png_bytes(img.value().rgb.data(), img.value().height, img.value().width, 3);
    if (!png.ok()) return fail(png.status().message());
    Status st = write_file_atomic(argv[3], png.value());
    return st.ok() ? 0 : fail(st.message());
  }
  if (cmd == "manifest" && argc == 3) {  // ARTIFACT -> what the runtime read, or the error
    Result<Manifest> m = read_manifest(argv[2]);
    if (!m.ok()) return fail(m.status().message());
    const Manifest& v = m.value();
    nlohmann::json j = {{"task", v.task}, {"tasks", v.tasks()}, {"precision", v.precision},
                        {"input", v.input_name}, {"dtype", v.input_dtype}, {"multiple", v.shapes.multiple},
                        {"height", {v.shapes.height.min, v.shapes.height.opt, v.shapes.height.max}},
                        {"files", v.files.size()}};
    for (const auto& o : v.outputs) j["outputs"].push_back(o.name);
    std::cout << j.dump() << "\n";
    return 0;
  }
  if (cmd == "sha256" && argc == 3) {
    Result<std::string> h = sha256_file(argv[2]);
    if (!h.ok()) return fail(h.status().message());
    std::cout << h.value() << "\n";
    return 0;
  }
  return fail("usage: dinov3-deploy-probe geometry|resize|stitch|pil-resize|softmax|m2f-plan|m2f-probs|decode|manifest|sha256 ARGS...");
}

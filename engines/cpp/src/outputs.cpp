// Result files under infer's names, written atomically. The label PNG and the .npy files hold the
// same values as infer's; the pictures (NAME_seg.png, NAME_depth.png, NAME_pca.png) show the same
// things without infer's legend and colour bar (drawn there with PIL fonts and matplotlib).
#include "dinov3_deploy/outputs.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>

#include <nlohmann/json.hpp>

#include "stb_image_impl.h"

namespace dinov3_deploy {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

void append_bytes(void* ctx, void* data, int size) {
  static_cast<std::string*>(ctx)->append(static_cast<const char*>(data), static_cast<size_t>(size));
}

std::array<uint8_t, 3> colour_of(const Classes* classes, int id) {
  if (classes && id < static_cast<int>(classes->palette.size())) return classes->palette[static_cast<size_t>(id)];
  // no palette: a fixed colour per id (golden-ratio hues), deterministic across runs
  const double hue = std::fmod(id * 0.618033988749895, 1.0) * 6.0;
  const double f = hue - std::floor(hue);
  const auto v = [](double x) { return static_cast<uint8_t>(40 + 200 * x); };
  switch (static_cast<int>(hue)) {
    case 0: return {v(1), v(f), v(0)};
    case 1: return {v(1 - f), v(1), v(0)};
    case 2: return {v(0), v(1), v(f)};
    case 3: return {v(0), v(1 - f), v(1)};
    case 4: return {v(f), v(0), v(1)};
    default: return {v(1), v(0), v(1 - f)};
  }
}

// image | overlay | mask, side by side (infer's panel without its legend strip)
std::vector<uint8_t> seg_panel(const Image& img, const std::vector<uint8_t>& labels, const Classes* classes) {
  const int h = img.height, w = img.width;
  std::vector<uint8_t> out(static_cast<size_t>(h) * w * 9);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const size_t i = static_cast<size_t>(y) * w + x;
      const auto col = colour_of(classes, labels[i]);
      for (size_t c = 0; c < 3; ++c) {
        const uint8_t px = img.rgb[3 * i + c];
        uint8_t* row = &out[static_cast<size_t>(y) * w * 9];
        row[3 * static_cast<size_t>(x) + c] = px;
        row[3 * static_cast<size_t>(w + x) + c] = static_cast<uint8_t>(0.5 * px + 0.5 * col[c]);
        row[3 * static_cast<size_t>(2 * w + x) + c] = col[c];
      }
    }
  return out;
}

// image | depth (near is bright), side by side
std::vector<uint8_t> depth_panel(const Image& img, const std::vector<float>& depth) {
  const int h = img.height, w = img.width;
  const auto [lo, hi] = std::minmax_element(depth.begin(), depth.end());
  const float span = std::max(*hi - *lo, 1e-12f);
  std::vector<uint8_t> out(static_cast<size_t>(h) * w * 6);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const size_t i = static_cast<size_t>(y) * w + x;
      uint8_t* row = &out[static_cast<size_t>(y) * w * 6];
      const auto g = static_cast<uint8_t>(255.0f * (*hi - depth[i]) / span);
      for (size_t c = 0; c < 3; ++c) {
        row[3 * static_cast<size_t>(x) + c] = img.rgb[3 * i + c];
        row[3 * static_cast<size_t>(w + x) + c] = g;
      }
    }
  return out;
}

// The first three principal components of patch features [gh*gw][d] as RGB in 0..255
// (power iteration with deflation on the d x d covariance; clipped at the 1st/99th percentile).
std::vector<uint8_t> pca_rgb(const std::vector<float>& f, size_t n, size_t d) {
  std::vector<double> x(f.begin(), f.end()), mean(d, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < d; ++j) mean[j] += x[i * d + j] / static_cast<double>(n);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < d; ++j) x[i * d + j] -= mean[j];
  std::vector<double> cov(d * d, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (size_t a = 0; a < d; ++a)
      for (size_t b = 0; b < d; ++b) cov[a * d + b] += x[i * d + a] * x[i * d + b];
  std::vector<uint8_t> rgb(n * 3, 0);
  for (size_t k = 0; k < 3 && k < d; ++k) {
    std::vector<double> v(d, 1.0 / std::sqrt(static_cast<double>(d))), next(d);
    for (int it = 0; it < 200; ++it) {
      for (size_t a = 0; a < d; ++a) next[a] = std::inner_product(&cov[a * d], &cov[a * d] + d, v.begin(), 0.0);
      const double norm = std::sqrt(std::inner_product(next.begin(), next.end(), next.begin(), 0.0));
      if (norm == 0) break;
      for (size_t a = 0; a < d; ++a) v[a] = next[a] / norm;
    }
    double lambda = 0;
    for (size_t a = 0; a < d; ++a) lambda += v[a] * std::inner_product(&cov[a * d], &cov[a * d] + d, v.begin(), 0.0);
    for (size_t a = 0; a < d; ++a)
      for (size_t b = 0; b < d; ++b) cov[a * d + b] -= lambda * v[a] * v[b];
    std::vector<double> p(n);
    for (size_t i = 0; i < n; ++i) p[i] = std::inner_product(&x[i * d], &x[i * d] + d, v.begin(), 0.0);
    std::vector<double> sorted = p;
    std::sort(sorted.begin(), sorted.end());
    const double lo = sorted[static_cast<size_t>(0.01 * static_cast<double>(n - 1))];
    const double hi = sorted[static_cast<size_t>(0.99 * static_cast<double>(n - 1))];
    for (size_t i = 0; i < n; ++i)
      rgb[i * 3 + k] = static_cast<uint8_t>(255.0 * std::clamp((p[i] - lo) / std::max(hi - lo, 1e-12), 0.0, 1.0));
  }
  return rgb;
}

std::string class_name(const Classes* c, int id) {
  return c && id < static_cast<int>(c->names.size()) ? c->names[static_cast<size_t>(id)] : std::to_string(id);
}

double round_to(double v, int digits) {
  const double s = std::pow(10.0, digits);
  return std::nearbyint(v * s) / s;
}

}  // namespace

std::vector<std::string> output_suffixes(const std::string& task) {
  if (task == "seg") return {"_labels.png", "_seg.png"};
  if (task == "depth") return {"_depth.npy", "_depth.png"};
  if (task == "features") return {"_patch_tokens.npy", "_pca.png"};
  return {};
}

Status write_file_atomic(const std::string& path, const std::string& bytes) {
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  const std::string tmp = path + ".tmp-dinov3";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return Status::error("cannot write " + path);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) return Status::error("cannot write " + path);
  }
  fs::rename(tmp, path, ec);
  if (ec) return Status::error("cannot write " + path + ": " + ec.message());
  return Status();
}

std::string npy_bytes(const std::vector<float>& data, const std::vector<int64_t>& shape) {
  std::string dims;
  for (int64_t s : shape) dims += std::to_string(s) + ", ";
  if (shape.size() > 1) dims.erase(dims.size() - 2);  // (a, b) but (a,) for one dimension
  else if (!shape.empty()) dims.erase(dims.size() - 1);
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  out += header;
  out.append(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(float));
  return out;
}

Result<std::string> png_bytes(const uint8_t* pixels, int height, int width, int channels) {
  std::string out;
  if (!stbi_write_png_to_func(append_bytes, &out, width, height, channels, pixels, width * channels))
    return Status::error("PNG encoding failed");
  return out;
}

Status save_prediction(const Prediction& pred, const Image& image, const std::string& name,
                       const std::string& out_dir, const Manifest& manifest, std::string* summary_json) {
  const int h = image.height, w = image.width;
  json per_task = json::object();
  auto png = [&](const std::string& file, const std::vector<uint8_t>& px, int width, int channels) -> Status {
    Result<std::string> b = png_bytes(px.data(), h, width, channels);
    return b.ok() ? write_file_atomic(out_dir + "/" + file, b.value()) : b.status();
  };
  for (const std::string& task : pred.tasks) {
    const std::vector<std::string> sfx = output_suffixes(task);
    json fields = json::object();
    Status st;
    if (task == "seg") {
      const Classes* classes = manifest.classes_for("seg");
      st = png(name + sfx[0], pred.labels, w, 1);
      if (st.ok()) st = png(name + sfx[1], seg_panel(image, pred.labels, classes), 3 * w, 3);
      std::map<int, size_t> counts;
      for (uint8_t l : pred.labels) ++counts[l];
      json shares = json::object();
      for (const auto& [id, n] : counts)
        shares[class_name(classes, id)] = round_to(static_cast<double>(n) / static_cast<double>(pred.labels.size()), 4);
      fields["classes"] = shares;
    } else if (task == "depth") {
      st = write_file_atomic(out_dir + "/" + name + sfx[0], npy_bytes(pred.depth, {h, w}));
      if (st.ok()) st = png(name + sfx[1], depth_panel(image, pred.depth), 2 * w, 3);
      std::vector<float> sorted = pred.depth;
      std::sort(sorted.begin(), sorted.end());
      const size_t n = sorted.size();
      const double median = n % 2 ? sorted[n / 2] : 0.5 * (static_cast<double>(sorted[n / 2 - 1]) + sorted[n / 2]);
      fields["depth_m"] = {{"min", sorted.front()}, {"median", median}, {"max", sorted.back()}};
    } else if (task == "cls") {
      const Classes* classes = manifest.classes_for("cls");
      const double top = *std::max_element(pred.logits.begin(), pred.logits.end());
      double sum = 0;
      for (float l : pred.logits) sum += std::exp(l - top);
      std::vector<size_t> order(pred.logits.size());
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return pred.logits[a] > pred.logits[b]; });
      json top5 = json::array();
      for (size_t r = 0; r < std::min<size_t>(5, order.size()); ++r) {
        const size_t i = order[r];
        top5.push_back({{"class", class_name(classes, static_cast<int>(i))}, {"logit", pred.logits[i]},
                        {"probability", round_to(std::exp(pred.logits[i] - top) / sum, 6)}});
      }
      fields["top5"] = top5;
    } else if (task == "features") {
      st = write_file_atomic(out_dir + "/" + name + sfx[0], npy_bytes(pred.patch, pred.patch_shape));
      if (st.ok() && pred.patch_shape.size() == 3) {
        const auto gh = static_cast<size_t>(pred.patch_shape[0]), gw = static_cast<size_t>(pred.patch_shape[1]);
        const std::vector<uint8_t> grid = pca_rgb(pred.patch, gh * gw, static_cast<size_t>(pred.patch_shape[2]));
        std::vector<uint8_t> panel(static_cast<size_t>(h) * w * 6);
        for (int y = 0; y < h; ++y)
          for (int x = 0; x < w; ++x) {  // nearest-neighbour upscale of the grid beside the image
            const size_t gy = static_cast<size_t>(y) * gh / static_cast<size_t>(h);
            const size_t gx = static_cast<size_t>(x) * gw / static_cast<size_t>(w);
            uint8_t* row = &panel[static_cast<size_t>(y) * w * 6];
            for (size_t c = 0; c < 3; ++c) {
              row[3 * static_cast<size_t>(x) + c] = image.rgb[(static_cast<size_t>(y) * w + x) * 3 + c];
              row[3 * static_cast<size_t>(w + x) + c] = grid[(gy * gw + gx) * 3 + c];
            }
          }
        st = png(name + sfx[1], panel, 2 * w, 3);
      }
      fields["patch_tokens"] = pred.patch_shape;
    }
    if (!st.ok()) return st;
    per_task[task] = fields;
  }
  json summary = {{"image", name}, {"task", manifest.task}};
  if (pred.tasks.size() == 1) {
    for (auto& [k, v] : per_task[pred.tasks[0]].items()) summary[k] = v;
  } else {
    summary["tasks"] = per_task;
  }
  *summary_json = summary.dump();
  return Status();
}

}  // namespace dinov3_deploy

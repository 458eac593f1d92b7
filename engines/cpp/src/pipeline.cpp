// predict_image (runtime/inference.py) in C++: the same resize, windows, batches and stitch.
#include "dinov3_deploy/pipeline.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "dinov3_deploy/geometry.h"
#include "dinov3_deploy/resize.h"
#include "dinov3_deploy/stitch.h"

namespace dinov3_deploy {
namespace {

std::string range_text(const Range& r) { return std::to_string(r.min) + ".." + std::to_string(r.max); }

// uint8 HxWx3 -> float planes [3][H][W] holding 0..255
Planes to_planes(const Image& img) {
  Planes p{3, img.height, img.width, std::vector<float>(static_cast<size_t>(3) * img.height * img.width)};
  const size_t hw = static_cast<size_t>(img.height) * img.width;
  for (size_t i = 0; i < hw; ++i)
    for (size_t c = 0; c < 3; ++c) p.data[c * hw + i] = static_cast<float>(img.rgb[3 * i + c]);
  return p;
}

// _resize_short_side: bilinear, short side = `short_side`, the long side rounded (Python's round)
Planes resize_short_side(const Planes& p, int short_side) {
  const double s = static_cast<double>(short_side) / std::min(p.h, p.w);
  const int nh = std::max(short_side, static_cast<int>(std::nearbyint(p.h * s)));
  const int nw = std::max(short_side, static_cast<int>(std::nearbyint(p.w * s)));
  if (nh == p.h && nw == p.w) return p;
  return resize_bilinear(p, nh, nw, 3);
}

// Predictor.to_input for a batch of crops of `p`: round, clamp to 0..255, then uint8 NHWC or
// (x / 255 - mean) / std in float32 NCHW (float16 when the graph takes it).
Result<HostTensor> make_input(const Manifest& m, const Planes& p, const std::vector<Window>& crops) {
  Result<DType> dt = dtype_from_name(m.input_dtype);
  if (!dt.ok()) return dt.status();
  const int h = crops[0].y1 - crops[0].y0, w = crops[0].x1 - crops[0].x0;
  HostTensor t;
  t.dtype = dt.value();
  t.shape = m.uint8_input() ? std::vector<int64_t>{static_cast<int64_t>(crops.size()), h, w, 3}
                            : std::vector<int64_t>{static_cast<int64_t>(crops.size()), 3, h, w};
  t.bytes.resize(static_cast<size_t>(t.count()) * dtype_size(t.dtype));
  size_t k = 0;
  for (const Window& win : crops) {
    for (int c = 0; c < 3; ++c) {
      const float* plane = p.plane(c);
      for (int y = 0; y < h; ++y) {
        for (int x = 0; x < w; ++x) {
          float v = std::nearbyint(plane[static_cast<size_t>(win.y0 + y) * p.w + (win.x0 + x)]);
          v = std::min(std::max(v, 0.0f), 255.0f);
          size_t at;
          if (m.uint8_input()) {
            at = ((k * h + static_cast<size_t>(y)) * w + static_cast<size_t>(x)) * 3 + static_cast<size_t>(c);
            t.bytes[at] = static_cast<uint8_t>(v);
            continue;
          }
          at = ((k * 3 + static_cast<size_t>(c)) * h + static_cast<size_t>(y)) * w + static_cast<size_t>(x);
          const float norm = (v / 255.0f - m.mean[static_cast<size_t>(c)]) / m.std[static_cast<size_t>(c)];
          if (t.dtype == DType::kFloat16) {
            reinterpret_cast<uint16_t*>(t.bytes.data())[at] = float_to_half(norm);
          } else {
            reinterpret_cast<float*>(t.bytes.data())[at] = norm;
          }
        }
      }
    }
    ++k;
  }
  return t;
}

Result<const FloatTensor*> output(const Outputs& outs, const std::string& name) {
  auto it = outs.find(name);
  if (it == outs.end()) return Status::error("the graph has no output '" + name + "'");
  return &it->second;
}

}  // namespace

Result<int> window_size(const ShapeRanges& s, int requested) {
  const int crop = requested ? requested : std::min(s.height.opt, s.width.opt);
  const bool ok = crop % s.multiple == 0 && s.height.min <= crop && crop <= s.height.max && s.width.min <= crop &&
                  crop <= s.width.max;
  if (!ok)
    return Status::error("--window " + std::to_string(crop) + " is not an input this artifact accepts (H " +
                         range_text(s.height) + ", W " + range_text(s.width) + ", multiple of " +
                         std::to_string(s.multiple) + ")");
  return crop;
}

Result<int> batch_windows_of(const ShapeRanges& s, int requested) {
  if (requested == 0) return std::max(1, std::min(s.batch.max, 4));
  if (requested < s.batch.min || requested > s.batch.max)
    return Status::error("--batch-windows " + std::to_string(requested) + " is outside the artifact's batch range " +
                         std::to_string(s.batch.min) + ".." + std::to_string(s.batch.max));
  return requested;
}

Pipeline::Pipeline(const Manifest& manifest, Backend& backend, PipelineOptions options)
    : manifest_(manifest), backend_(backend), options_(options) {}

Result<Prediction> Pipeline::predict(const Image& image) {
  const ShapeRanges& s = manifest_.shapes;
  Result<int> size = window_size(s, options_.window);
  if (!size.ok()) return size.status();
  const int H = image.height, W = image.width;
  const Planes pixels = to_planes(image);
  Prediction pred;
  pred.tasks = manifest_.tasks();
  const bool has_seg = std::find(pred.tasks.begin(), pred.tasks.end(), "seg") != pred.tasks.end();
  if (has_seg) {
    Result<int> batch = batch_windows_of(s, options_.batch_windows);
    if (!batch.ok()) return batch.status();
    const Planes scaled = resize_short_side(pixels, size.value());
    const int stride = options_.stride ? options_.stride : std::max(s.multiple, size.value() * 2 / 3);
    Result<WindowGeometry> g = window_geometry(scaled.h, scaled.w, size.value(), size.value(), stride, stride);
    if (!g.ok()) return g.status();
    const std::vector<Window> windows = g.value().windows();
    const std::string name = manifest_.output_name("seg", "logits");
    std::vector<float> logits;
    int64_t classes = 0, lh = 0, lw = 0;
    for (size_t start = 0; start < windows.size(); start += static_cast<size_t>(batch.value())) {
      std::vector<Window> chunk(windows.begin() + static_cast<long>(start),
                                windows.begin() + static_cast<long>(std::min(windows.size(),
                                                                             start + static_cast<size_t>(batch.value()))));
      Result<HostTensor> in = make_input(manifest_, scaled, chunk);
      if (!in.ok()) return in.status();
      Outputs outs;
      Status st = backend_.run(in.value(), &outs);
      if (!st.ok()) return st;
      Result<const FloatTensor*> o = output(outs, name);
      if (!o.ok()) return o.status();
      const FloatTensor& t = *o.value();
      if (t.shape.size() != 4) return Status::error("output " + name + " is not [B, C, h, w]");
      classes = t.shape[1];
      lh = t.shape[2];
      lw = t.shape[3];
      logits.insert(logits.end(), t.data.begin(), t.data.end());
      pred.windows_run += static_cast<int>(chunk.size());
    }
    std::vector<int32_t> labels;
    if (options_.gpu_stitch) {
      Status st = stitch_labels_cuda(logits.data(), static_cast<int>(classes), static_cast<int>(lh),
                                     static_cast<int>(lw), g.value(), H, W, &labels);
      if (!st.ok()) return st;
    } else {
      labels = stitch_labels_cpu(logits.data(), static_cast<int>(classes), static_cast<int>(lh), static_cast<int>(lw),
                                 g.value(), H, W);
    }
    pred.labels.resize(labels.size());
    for (size_t i = 0; i < labels.size(); ++i) pred.labels[i] = static_cast<uint8_t>(labels[i]);  // as .to(uint8)
  }
  if (std::all_of(pred.tasks.begin(), pred.tasks.end(), [](const std::string& t) { return t == "seg"; })) return pred;
  // whole-image tasks: one input resized to a valid size (Python's round: half to even)
  const int m = s.multiple;
  const int th = std::min(std::max(s.height.min, static_cast<int>(std::nearbyint(static_cast<double>(H) / m)) * m),
                          s.height.max);
  const int tw = std::min(std::max(s.width.min, static_cast<int>(std::nearbyint(static_cast<double>(W) / m)) * m),
                          s.width.max);
  const Planes x = (th == H && tw == W) ? pixels : resize_bilinear(pixels, th, tw, 3);
  Result<HostTensor> in = make_input(manifest_, x, {Window{0, th, 0, tw}});
  if (!in.ok()) return in.status();
  Outputs outs;
  Status st = backend_.run(in.value(), &outs);
  if (!st.ok()) return st;
  ++pred.windows_run;
  for (const std::string& task : pred.tasks) {
    if (task == "depth") {
      Result<const FloatTensor*> o = output(outs, manifest_.output_name("depth", "depth"));
      if (!o.ok()) return o.status();
      const FloatTensor& d = *o.value();
      const int dh = static_cast<int>(d.shape[d.shape.size() - 2]), dw = static_cast<int>(d.shape.back());
      Planes dp{1, dh, dw, std::vector<float>(d.data.begin(), d.data.begin() + static_cast<long>(dh) * dw)};
      pred.depth = resize_bilinear(dp, H, W, 1).data;
    } else if (task == "cls") {
      Result<const FloatTensor*> o = output(outs, manifest_.output_name("cls", "logits"));
      if (!o.ok()) return o.status();
      const FloatTensor& c = *o.value();
      pred.logits.assign(c.data.begin(), c.data.begin() + c.shape.back());
    } else if (task == "features") {
      Result<const FloatTensor*> o = output(outs, manifest_.output_name("features", "patch"));
      if (!o.ok()) return o.status();
      const FloatTensor& f = *o.value();
      const int64_t n = f.shape[1], dim = f.shape[2];
      const int step = manifest_.backbone_family == "vit" ? manifest_.patch_size : 32;  // ConvNeXt: the last stage
      const int64_t gh = th / step, gw = tw / step;
      pred.patch.assign(f.data.begin(), f.data.begin() + n * dim);
      pred.patch_shape = gh * gw == n ? std::vector<int64_t>{gh, gw, dim} : std::vector<int64_t>{n, dim};
    }
  }
  return pred;
}

}  // namespace dinov3_deploy

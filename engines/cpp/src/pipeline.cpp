// predict_image (runtime/inference.py) in C++: the same resize, windows, batches and stitch.
#include "dinov3_deploy/pipeline.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "dinov3_deploy/geometry.h"
#include "dinov3_deploy/m2f.h"
#include "dinov3_deploy/resize.h"
#include "dinov3_deploy/stitch.h"
#include "window_batches.h"

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

Status Pipeline::predict_labels(const Image& image, const Planes& pixels, int size, Prediction* pred) {
  const ShapeRanges& s = manifest_.shapes;
  const int H = image.height, W = image.width;
  Result<int> batch = batch_windows_of(s, options_.batch_windows);
  if (!batch.ok()) return batch.status();
  std::vector<int32_t> labels;
  if (is_m2f_artifact(manifest_)) {
    Result<std::vector<int32_t>> l = m2f_labels(manifest_, backend_, image,
                                                M2FOptions{size, options_.stride, batch.value(), options_.tta},
                                                &pred->windows_run);
    if (!l.ok()) return l.status();
    labels = std::move(l.value());
  } else {
    const Planes scaled = resize_short_side(pixels, size);
    const int stride = options_.stride ? options_.stride : std::max(s.multiple, size * 2 / 3);
    Result<WindowGeometry> g = window_geometry(scaled.h, scaled.w, size, size, stride, stride);
    if (!g.ok()) return g.status();
    Result<WindowOutputs> logits = run_windows(manifest_, backend_, scaled, g.value().windows(), batch.value(),
                                                manifest_.output_name("seg", "logits"), PlanesHold::kPixels,
                                                &pred->windows_run);
    if (!logits.ok()) return logits.status();
    const WindowOutputs& lo = logits.value();
    if (options_.gpu_stitch) {
      Status st = stitch_labels_cuda(lo.data.data(), lo.classes, lo.h, lo.w, g.value(), H, W, &labels);
      if (!st.ok()) return st;
    } else {
      labels = stitch_labels_cpu(lo.data.data(), lo.classes, lo.h, lo.w, g.value(), H, W);
    }
  }
  pred->labels.resize(labels.size());
  for (size_t i = 0; i < labels.size(); ++i) pred->labels[i] = static_cast<uint8_t>(labels[i]);  // as .to(uint8)
  return Status();
}

Result<Prediction> Pipeline::predict(const Image& image) {
  const ShapeRanges& s = manifest_.shapes;
  Result<int> size = window_size(s, options_.window);
  if (!size.ok()) return size.status();
  const int H = image.height, W = image.width;
  const Planes pixels = to_planes(image);
  Prediction pred;
  pred.tasks = manifest_.tasks();
  const bool has_seg = std::find(pred.tasks.begin(), pred.tasks.end(), "seg") != pred.tasks.end();
  if (options_.tta && !is_m2f_artifact(manifest_))
    return Status::error("--tta applies to Mask2Former artifacts (the release's M2F protocol)");
  if (has_seg) {
    Status st = predict_labels(image, pixels, size.value(), &pred);
    if (!st.ok()) return st;
  }
  if (std::all_of(pred.tasks.begin(), pred.tasks.end(), [](const std::string& t) { return t == "seg"; })) return pred;
  // whole-image tasks: one input resized to a valid size (Python's round: half to even)
  const int m = s.multiple;
  const int th = std::min(std::max(s.height.min, static_cast<int>(std::nearbyint(static_cast<double>(H) / m)) * m),
                          s.height.max);
  const int tw = std::min(std::max(s.width.min, static_cast<int>(std::nearbyint(static_cast<double>(W) / m)) * m),
                          s.width.max);
  const Planes x = (th == H && tw == W) ? pixels : resize_bilinear(pixels, th, tw, 3);
  Result<HostTensor> in = make_input(manifest_, x, {Window{0, th, 0, tw}}, PlanesHold::kPixels);
  if (!in.ok()) return in.status();
  Outputs outs;
  Status st = backend_.run(in.value(), &outs);
  if (!st.ok()) return st;
  ++pred.windows_run;
  for (const std::string& task : pred.tasks) {
    if (task == "depth") {
      Result<const FloatTensor*> o = find_output(outs, manifest_.output_name("depth", "depth"));
      if (!o.ok()) return o.status();
      const FloatTensor& d = *o.value();
      const int dh = static_cast<int>(d.shape[d.shape.size() - 2]), dw = static_cast<int>(d.shape.back());
      Planes dp{1, dh, dw, std::vector<float>(d.data.begin(), d.data.begin() + static_cast<long>(dh) * dw)};
      pred.depth = resize_bilinear(dp, H, W, 1).data;
    } else if (task == "cls") {
      Result<const FloatTensor*> o = find_output(outs, manifest_.output_name("cls", "logits"));
      if (!o.ok()) return o.status();
      const FloatTensor& c = *o.value();
      pred.logits.assign(c.data.begin(), c.data.begin() + c.shape.back());
    } else if (task == "features") {
      Result<const FloatTensor*> o = find_output(outs, manifest_.output_name("features", "patch"));
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

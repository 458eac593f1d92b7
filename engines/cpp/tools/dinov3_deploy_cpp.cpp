// dinov3-deploy-cpp ARTIFACT INPUT... -o OUT: `dinov3-deploy infer` from manifest.json and the
// model file alone. Same output names, same exit codes (0 all written, 1 some images failed and
// the others were written, 2 a usage error, one line on stderr), same predictions.json layout.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dinov3_deploy/image.h"
#include "dinov3_deploy/manifest.h"
#include "dinov3_deploy/onnxruntime_backend.h"
#include "dinov3_deploy/outputs.h"
#include "dinov3_deploy/pipeline.h"
#include "dinov3_deploy/stitch.h"
#include "dinov3_deploy/tensorrt_backend.h"

namespace fs = std::filesystem;
using namespace dinov3_deploy;  // NOLINT: a program, not a header

namespace {

constexpr int kPartialFailure = 1;
constexpr int kUsageError = 2;

const char* kUsage =
    "usage: dinov3-deploy-cpp ARTIFACT INPUT... -o OUT [--backend onnxruntime|onnxruntime-cuda|"
    "onnxruntime-tensorrt|tensorrt]\n"
    "                         [--window N] [--stride N] [--batch-windows N] [--stitch cpu|gpu] [--cuda-graphs]\n"
    "                         [--tta] [--overwrite]\n"
    "INPUT: image files, or folders read recursively. Per image (NAME: its path relative to the folder\n"
    "given, extension included): NAME_labels.png + NAME_seg.png (seg), NAME_depth.npy + NAME_depth.png\n"
    "(depth), NAME_patch_tokens.npy + NAME_pca.png (features), cls in predictions.json.\n"
    "--tta: Mask2Former artifacts, the release's test-time augmentation (short side x 0.9..1.1 and mirrors).\n"
    "Exit status: 0 ok, 1 some images failed (the others written), 2 usage error.\n";

struct Args {
  std::string artifact, out, backend = "onnxruntime", stitch = "cpu";
  std::vector<std::string> inputs;
  int window = 0, stride = 0, batch_windows = 0;
  bool overwrite = false, cuda_graphs = false, tta = false;
};

struct Input {
  std::string name;
  fs::path file;
};

[[noreturn]] void die(const std::string& message) {
  std::cerr << "error: " << message << "\n";
  std::exit(kUsageError);
}

int positive(const std::string& flag, const char* value) {
  char* end = nullptr;
  const long v = value ? std::strtol(value, &end, 10) : 0;
  if (!value || *end != '\0' || v < 1 || v > 1 << 20) die(flag + " takes a positive integer");
  return static_cast<int>(v);
}

Args parse(int argc, char** argv) {
  Args a;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "-o" || arg == "--out") {
      const char* v = value();
      if (!v) die("-o takes a folder");
      a.out = v;
    } else if (arg == "--backend") {
      const char* v = value();
      a.backend = v ? v : "";
    } else if (arg == "--stitch") {
      const char* v = value();
      a.stitch = v ? v : "";
    } else if (arg == "--window") {
      a.window = positive(arg, value());
    } else if (arg == "--stride") {
      a.stride = positive(arg, value());
    } else if (arg == "--batch-windows") {
      a.batch_windows = positive(arg, value());
    } else if (arg == "--overwrite") {
      a.overwrite = true;
    } else if (arg == "--cuda-graphs") {
      a.cuda_graphs = true;
    } else if (arg == "--tta") {
      a.tta = true;
    } else if (arg.size() > 1 && arg[0] == '-') {
      die("unknown option " + arg + " (see --help)");
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() < 2) die("give ARTIFACT and at least one INPUT (see --help)");
  if (a.out.empty()) die("give the output folder with -o OUT");
  a.artifact = positional[0];
  a.inputs.assign(positional.begin() + 1, positional.end());
  if (a.stitch != "cpu" && a.stitch != "gpu") die("--stitch must be cpu or gpu, got '" + a.stitch + "'");
  return a;
}

bool under(const fs::path& p, const fs::path& folder) {
  if (folder.empty()) return false;
  auto f = folder.begin(), q = p.begin();
  for (; f != folder.end(); ++f, ++q)
    if (q == p.end() || *f != *q) return false;
  return true;
}

// Image files under `folder`, recursively, in infer's order (each folder's files sorted, then its
// sub-folders sorted); hidden entries and the output folder skipped.
void scan(const fs::path& folder, const fs::path& root, const fs::path& exclude, std::vector<Input>* found) {
  std::vector<std::string> files, dirs;
  for (const auto& e : fs::directory_iterator(folder)) {
    const std::string n = e.path().filename().string();
    if (n.empty() || n[0] == '.') continue;
    if (e.is_directory()) {
      if (!under(fs::weakly_canonical(e.path()), exclude)) dirs.push_back(n);
    } else if (is_image_name(n)) {
      files.push_back(n);
    }
  }
  std::sort(files.begin(), files.end());
  std::sort(dirs.begin(), dirs.end());
  for (const auto& f : files) found->push_back({fs::relative(folder / f, root).generic_string(), folder / f});
  for (const auto& d : dirs) scan(folder / d, root, exclude, found);
}

std::vector<Input> list_images(const std::vector<std::string>& args, const fs::path& exclude) {
  std::vector<Input> inputs;
  std::set<fs::path> seen;
  std::map<std::string, fs::path> by_name;
  std::vector<std::string> clashes;
  for (const auto& a : args) {
    const fs::path arg(a);
    std::vector<Input> found;
    if (fs::is_directory(arg)) {
      scan(arg, arg, exclude, &found);
    } else if (fs::is_regular_file(arg)) {
      found.push_back({arg.filename().string(), arg});
    } else {
      die("no such image or folder: " + a);
    }
    for (auto& in : found) {
      const fs::path real = fs::weakly_canonical(in.file);
      if (!seen.insert(real).second) continue;
      auto it = by_name.find(in.name);
      if (it != by_name.end()) {
        clashes.push_back(it->second.string() + " and " + in.file.string() + " (both '" + in.name + "')");
        continue;
      }
      by_name[in.name] = in.file;
      inputs.push_back(in);
    }
  }
  if (!clashes.empty()) {
    std::string shown;
    for (size_t i = 0; i < clashes.size() && i < 3; ++i) shown += (i ? "; " : "") + clashes[i];
    if (clashes.size() > 3) shown += "; and " + std::to_string(clashes.size() - 3) + " more";
    die("different images would write the same outputs: " + shown +
        ". Outputs are named after the path relative to the folder given; run them separately with different --out "
        "folders");
  }
  if (inputs.empty()) {
    std::string joined;
    for (size_t i = 0; i < args.size(); ++i) joined += (i ? ", " : "") + args[i];
    die("no images (.png, .jpg, .jpeg, .bmp, .webp) found in " + joined);
  }
  return inputs;
}

void refuse_existing(const fs::path& out, const std::vector<std::string>& planned, bool overwrite) {
  if (overwrite || !fs::exists(out)) return;
  std::vector<std::string> existing;
  for (const auto& p : planned)
    if (fs::exists(out / p)) existing.push_back(p);
  if (existing.empty()) return;
  std::string shown;
  for (size_t i = 0; i < existing.size() && i < 3; ++i) shown += (i ? ", " : "") + existing[i];
  if (existing.size() > 3) shown += " and " + std::to_string(existing.size() - 3) + " more";
  die(out.string() + " already holds " + std::to_string(existing.size()) + " file(s) this run would write (" + shown +
      "); pass --overwrite to replace them, or choose another --out");
}

std::unique_ptr<Backend> make_backend(const Args& a, const Manifest& m) {
  Result<std::unique_ptr<Backend>> b = Status::error("");
  if (a.backend == "onnxruntime" || a.backend == "onnxruntime-cpu") {
    b = make_onnxruntime_backend(m, "cpu");
  } else if (a.backend == "onnxruntime-cuda" || a.backend == "onnxruntime-tensorrt") {
    b = make_onnxruntime_backend(m, a.backend.substr(12));
  } else if (a.backend == "tensorrt") {
    TensorRTOptions o;
    o.cuda_graphs = a.cuda_graphs;
    b = make_tensorrt_backend(m, o);
  } else {
    die("--backend must be onnxruntime, onnxruntime-cuda, onnxruntime-tensorrt or tensorrt, got '" + a.backend + "'");
  }
  if (!b.ok()) die(b.status().message());
  return std::move(b.value());
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  const fs::path out(args.out);
  if (fs::exists(out) && !fs::is_directory(out))
    die("--out " + args.out + " is a file, not a folder; choose another output folder");
  Result<Manifest> manifest = read_manifest(args.artifact);
  if (!manifest.ok()) die(manifest.status().message());
  const Manifest& m = manifest.value();
  const std::vector<std::string> tasks = m.tasks();
  const bool seg = std::find(tasks.begin(), tasks.end(), "seg") != tasks.end();
  Result<int> window = window_size(m.shapes, args.window);  // a bad --window fails here, not once per image
  if (!window.ok()) die(window.status().message());
  if (seg) {
    Result<int> batch = batch_windows_of(m.shapes, args.batch_windows);
    if (!batch.ok()) die(batch.status().message());
  }
  if (args.stitch == "gpu" && !cuda_stitch_built())
    die("--stitch gpu: this build has no CUDA stitch (configure with -DDINOV3_WITH_CUDA=ON)");
  std::unique_ptr<Backend> backend = make_backend(args, m);
  const std::vector<Input> inputs = list_images(args.inputs, fs::weakly_canonical(out));
  std::vector<std::string> planned;  // in infer's order: each image's files, then predictions.json
  for (const auto& in : inputs)
    for (const auto& t : tasks)
      for (const auto& s : output_suffixes(t)) planned.push_back(in.name + s);
  planned.push_back("predictions.json");
  refuse_existing(out, planned, args.overwrite);
  for (const auto& note : m.notes) std::cerr << "note: " << note << "\n";

  PipelineOptions opts{args.window, args.stride, args.batch_windows, args.stitch == "gpu", args.tta};
  Pipeline pipeline(m, *backend, opts);
  nlohmann::json predictions = nlohmann::json::array(), failures = nlohmann::json::array();
  int windows = 0;
  const auto start = std::chrono::steady_clock::now();
  for (const auto& in : inputs) {
    Result<Image> img = read_rgb(in.file.string());
    Status st = img.status();
    if (st.ok()) {
      Result<Prediction> pred = pipeline.predict(img.value());
      st = pred.status();
      if (st.ok()) {
        windows += pred.value().windows_run;
        std::string summary;
        st = save_prediction(pred.value(), img.value(), in.name, args.out, m, &summary);
        if (st.ok()) predictions.push_back(nlohmann::json::parse(summary));
      }
    }
    if (!st.ok()) {  // one bad image must not cost the others their results
      failures.push_back({{"image", in.name}, {"reason", st.message()}});
      std::cerr << "failed: " << in.name << ": " << st.message() << "\n";
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double n = static_cast<double>(inputs.size());
  nlohmann::json tasks_json = nlohmann::json::object();
  for (const auto& t : tasks) tasks_json[t] = t == "seg" ? "sliding windows" : "whole image";
  nlohmann::json stats = {{"images_ok", predictions.size()}, {"images_failed", failures.size()},
                          {"windows_run", windows}, {"seconds", seconds}, {"seconds_per_image", seconds / n},
                          {"images_per_second", seconds > 0 ? n / seconds : 0.0}, {"backend", backend->name()},
                          {"stitch", seg ? nlohmann::json(args.stitch) : nlohmann::json()}, {"tasks", tasks_json},
                          {"runtime", "dinov3-deploy-cpp"}};
  nlohmann::json doc = {{"artifact", fs::absolute(args.artifact).lexically_normal().string()},
                        {"backend", backend->name()}, {"summary", stats}, {"predictions", predictions},
                        {"failures", failures}};
  Status st = write_file_atomic((out / "predictions.json").string(), doc.dump(2) + "\n");
  if (!st.ok()) die(st.message());
  std::fprintf(stderr, "%zu image(s) ok, %zu failed -> %s | %d input(s) run | %.0f ms/image, %.2f images/s | backend %s\n",
               predictions.size(), failures.size(), args.out.c_str(), windows, 1000.0 * seconds / n,
               seconds > 0 ? n / seconds : 0.0, backend->name().c_str());
  if (!failures.empty()) {
    std::fprintf(stderr, "%zu image(s) failed (listed in %s)\n", failures.size(),
                 (out / "predictions.json").string().c_str());
    return kPartialFailure;
  }
  return 0;
}

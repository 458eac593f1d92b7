// manifest.json of an artifact: what a C++ program needs to deploy it without Python. The checks
// and their messages are the Python reader's (dinov3_deploy/manifest.py, artifact.py), so a user
// sees the same sentence whichever runtime refused the artifact.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "dinov3_deploy/status.h"

namespace dinov3_deploy {

inline constexpr const char* kSchema = "dinov3-deploy-artifact";
inline constexpr int kSchemaVersion = 3;     // the version this reader writes and knows
inline constexpr int kOldestReadable = 2;   // schema 2 lacks only fields with defaults

struct Range {
  int min = 0, opt = 0, max = 0;
};

struct ShapeRanges {
  Range batch, height, width;
  int multiple = 1;
};

struct Classes {
  std::vector<std::string> names;
  std::vector<std::array<uint8_t, 3>> palette;
};

struct Head {
  std::string task;
  std::string head_type;  // "linear", "m2f" (Mask2Former: m2f.h), ...
  int n_classes = 0;
  std::optional<Classes> classes;
};

struct TensorSpec {
  std::string name;
  std::string dtype;
};

struct EngineProfile {
  std::string input;
  std::vector<int64_t> min, opt, max;
};

struct TensorRTFacts {
  std::string file, flavor, version;
  std::vector<EngineProfile> profiles;
};

struct FileEntry {
  std::string sha256;
  uint64_t bytes = 0;
};

struct Manifest {
  std::string root;  // the artifact folder
  int schema_version = 0;
  std::string task;  // seg | depth | cls | features | multi
  std::string precision;
  std::vector<Head> heads;  // multi: one per task in output order; else the one head (if any)
  // input
  std::string input_name, input_dtype, input_layout;
  std::array<float, 3> mean{}, std{};
  bool normalize_in_graph = false;
  ShapeRanges shapes;
  std::vector<TensorSpec> outputs;
  std::optional<Classes> classes;  // single-task artifacts
  std::string backbone_family;
  int patch_size = 16;
  std::string onnx_file;
  std::optional<TensorRTFacts> tensorrt;
  std::map<std::string, FileEntry> files;
  std::vector<std::string> notes;

  // The tasks the graph computes: every head's for a multi-head artifact, else the task.
  std::vector<std::string> tasks() const;
  bool uint8_input() const { return input_dtype == "uint8"; }
  // The graph output `name` of `task`: "seg.logits" in a multi-head graph, "logits" otherwise.
  std::string output_name(const std::string& task, const std::string& name) const;
  const Classes* classes_for(const std::string& task) const;
  const Head* head_for(const std::string& task) const;
};

// Reads root/manifest.json (schema name and version checked) and, with check_hashes, the size and
// sha256 of every file it lists.
Result<Manifest> read_manifest(const std::string& root, bool check_hashes = true);

}  // namespace dinov3_deploy

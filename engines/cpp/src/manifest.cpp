// manifest.json reader. Messages are the Python reader's word for word (manifest.py from_dict,
// read_manifest; artifact.py load_artifact): tests compare them.
#include "dinov3_deploy/manifest.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dinov3_deploy/sha256.h"

namespace dinov3_deploy {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Python's repr() of a JSON scalar, as the Python messages print the offending value.
std::string py_repr(const json& v) {
  if (v.is_null()) return "None";
  if (v.is_string()) return "'" + v.get<std::string>() + "'";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  return v.dump();
}

// str(Path(p)) for the forms a user types: trailing slashes dropped.
std::string clean_root(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

Range range_of(const json& v) {
  return Range{v.at(0).get<int>(), v.at(1).get<int>(), v.at(2).get<int>()};
}

Classes classes_of(const json& v) {
  Classes c;
  for (const auto& n : v.value("names", json::array())) c.names.push_back(n.get<std::string>());
  for (const auto& p : v.value("palette", json::array()))
    c.palette.push_back({static_cast<uint8_t>(p.at(0).get<int>()), static_cast<uint8_t>(p.at(1).get<int>()),
                         static_cast<uint8_t>(p.at(2).get<int>())});
  return c;
}

Head head_of(const json& v, const std::string& fallback_task) {
  Head h;
  h.task = v.contains("task") && v["task"].is_string() ? v["task"].get<std::string>() : fallback_task;
  h.head_type = v.contains("head_type") && v["head_type"].is_string() ? v["head_type"].get<std::string>() : "";
  h.n_classes = v.value("n_classes", 0);
  if (v.contains("classes") && v["classes"].is_object()) h.classes = classes_of(v["classes"]);
  return h;
}

Status check_schema(const json& d, const std::string& where) {
  if (!d.is_object() || !d.contains("schema") || d["schema"] != kSchema) {
    json schema = d.is_object() && d.contains("schema") ? d["schema"] : json();
    return Status::error(where + " is not a " + kSchema + " manifest (schema=" + py_repr(schema) + ")");
  }
  json version = d.contains("schema_version") ? d["schema_version"] : json();
  bool is_int = version.is_number_integer();
  if (is_int && version.get<int>() >= kOldestReadable && version.get<int>() <= kSchemaVersion) return Status();
  if (is_int && version.get<int>() > kSchemaVersion)
    return Status::error(where + " uses artifact schema version " + version.dump() + ", newer than the version " +
                         std::to_string(kSchemaVersion) +
                         " this dinov3-deploy reads: upgrade dinov3-deploy (pip install -U dinov3-deploy)");
  return Status::error(where + " uses artifact schema version " + py_repr(version) + ", older than the versions " +
                       std::to_string(kOldestReadable) + "-" + std::to_string(kSchemaVersion) +
                       " this dinov3-deploy reads: re-export the artifact with this version");
}

void fill(Manifest& m, const json& d) {
  m.schema_version = d.at("schema_version").get<int>();
  m.task = d.at("task").get<std::string>();
  m.precision = d.at("precision").get<std::string>();
  if (m.task == "multi") {
    for (const auto& h : d.at("heads")) m.heads.push_back(head_of(h, m.task));
  } else if (d.contains("head") && d["head"].is_object()) {
    m.heads.push_back(head_of(d["head"], m.task));
  }
  const json& in = d.at("input");
  m.input_name = in.at("name").get<std::string>();
  m.input_dtype = in.at("dtype").get<std::string>();
  m.input_layout = in.at("layout").get<std::string>();
  const json& norm = in.at("normalize");
  for (size_t i = 0; i < 3; ++i) {
    m.mean[i] = norm.at("mean").at(i).get<float>();
    m.std[i] = norm.at("std").at(i).get<float>();
  }
  m.normalize_in_graph = norm.value("in_graph", false);
  const json& sh = in.at("shapes");
  m.shapes = ShapeRanges{range_of(sh.at("batch")), range_of(sh.at("height")), range_of(sh.at("width")),
                         sh.at("multiple").get<int>()};
  for (const auto& o : d.at("outputs")) m.outputs.push_back({o.at("name").get<std::string>(),
                                                             o.at("dtype").get<std::string>()});
  if (d.contains("classes") && d["classes"].is_object()) m.classes = classes_of(d["classes"]);
  const json& bb = d.at("backbone");
  m.backbone_family = bb.value("family", "vit");
  m.patch_size = bb.value("patch_size", 16);
  m.onnx_file = d.at("onnx").at("file").get<std::string>();
  if (d.contains("tensorrt") && d["tensorrt"].is_object()) {
    const json& t = d["tensorrt"];
    TensorRTFacts f;
    f.file = t.at("file").get<std::string>();
    f.flavor = t.value("flavor", "");
    f.version = t.value("version", "");
    for (const auto& p : t.value("profiles", json::array()))
      f.profiles.push_back({p.at("input").get<std::string>(), p.at("min").get<std::vector<int64_t>>(),
                            p.at("opt").get<std::vector<int64_t>>(), p.at("max").get<std::vector<int64_t>>()});
    m.tensorrt = f;
  }
  const json files = d.value("files", json::object());  // a named copy: items() must not outlive it
  for (const auto& [rel, e] : files.items())
    m.files[rel] = FileEntry{e.at("sha256").get<std::string>(), e.at("bytes").get<uint64_t>()};
  for (const auto& n : d.value("notes", json::array())) m.notes.push_back(n.get<std::string>());
}

}  // namespace

std::vector<std::string> Manifest::tasks() const {
  if (task != "multi") return {task};
  std::vector<std::string> out;
  for (const auto& h : heads) out.push_back(h.task);
  return out;
}

std::string Manifest::output_name(const std::string& t, const std::string& name) const {
  return task == "multi" ? t + "." + name : name;
}

const Head* Manifest::head_for(const std::string& t) const {
  for (const auto& h : heads)
    if (h.task == t) return &h;
  return nullptr;
}

const Classes* Manifest::classes_for(const std::string& t) const {
  if (task != "multi") return t == task && classes ? &*classes : nullptr;
  const Head* h = head_for(t);
  return h && h->classes ? &*h->classes : nullptr;
}

Result<Manifest> read_manifest(const std::string& root_in, bool check_hashes) {
  const std::string root = clean_root(root_in);
  if (!fs::is_directory(root))
    return Status::error(root + " is not an artifact directory (run `dinov3-deploy export --out " + root + "`)");
  const std::string mpath = root + "/manifest.json";
  if (!fs::exists(mpath))
    return Status::error(root + " has no manifest.json: not a dinov3-deploy artifact, or an incomplete one");
  json d;
  try {
    std::ifstream in(mpath);
    d = json::parse(in);
  } catch (const json::exception& e) {
    return Status::error(mpath + " is not valid JSON (" + e.what() + "); re-export the artifact");
  }
  Status schema = check_schema(d, mpath);
  if (!schema.ok()) return schema;
  Manifest m;
  m.root = root;
  try {
    fill(m, d);
  } catch (const json::exception& e) {
    return Status::error(mpath + " lacks a field this runtime needs (" + e.what() + "); re-export the artifact");
  }
  if (m.files.empty()) return Status::error(mpath + " lists no files; re-export the artifact");
  if (check_hashes) {
    for (const auto& [rel, entry] : m.files) {
      const std::string f = root + "/" + rel;
      if (!fs::is_regular_file(f))
        return Status::error(root + ": " + rel + " listed in the manifest is missing; re-export the artifact");
      bool same = fs::file_size(f) == entry.bytes;
      if (same) {
        Result<std::string> h = sha256_file(f);
        if (!h.ok()) return h.status();
        same = h.value() == entry.sha256;
      }
      if (!same)
        return Status::error(root + ": " + rel +
                             " does not match its sha256 in the manifest (modified or corrupted); re-export the "
                             "artifact");
    }
  }
  return m;
}

}  // namespace dinov3_deploy

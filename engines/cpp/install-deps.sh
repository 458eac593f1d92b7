#!/usr/bin/env bash
# Build dependencies of the C++ runtime (engines/cpp), into .deps/cpp/ at the repository root
# (git-ignored) plus two small Debian packages. Idempotent: a second run with everything present
# only re-checks and returns in about a second.
#
#   stb (libstb-dev), nlohmann-json (nlohmann-json3-dev)    apt-get, the system's own sources
#   ONNX Runtime C/C++ headers + CMake-free layout           Debian trixie's libonnxruntime-dev .deb,
#                                                            fetched with a PRIVATE apt configuration
#                                                            (own sources list, state and cache under
#                                                            .deps/cpp/apt: the system's apt state is
#                                                            not touched) and unpacked with dpkg-deb -x
#   ONNX Runtime library                                     the onnxruntime wheel in the Python env
#                                                            (libonnxruntime.so.1.* + a .so.1 symlink)
#   TensorRT 10.14 headers (NvInfer*.h, Apache-2.0)          PyPI kernel-lens==2.0.1: pip download
#                                                            --no-deps, headers unzipped (installing it
#                                                            would pull in torch)
#   CUDA headers                                             triton's backends/nvidia/include (venv)
#   libcudart / libtensorrt_rtx (link only)                  the nvidia-cuda-runtime / tensorrt-rtx wheels
#
# Run it with the project's virtualenv active (or PYTHON=/path/to/python): onnxruntime and triton
# must be importable. It writes .deps/cpp/deps.cmake, which engines/cpp/CMakeLists.txt reads.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DEPS="$ROOT/.deps/cpp"
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
mkdir -p "$DEPS"
say() { echo "install-deps: $*"; }
sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. stb + nlohmann-json from the system's Debian sources
if [ ! -f /usr/include/stb/stb_image.h ] || [ ! -f /usr/include/nlohmann/json.hpp ]; then
  say "apt-get install libstb-dev nlohmann-json3-dev"
  sudo_ apt-get update -q >/dev/null
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    libstb-dev nlohmann-json3-dev >/dev/null
fi

# 2. ONNX Runtime headers from Debian trixie, with a private apt configuration
ORT_INC="$DEPS/onnxruntime/include"
if [ ! -f "$ORT_INC/onnxruntime_cxx_api.h" ]; then
  say "fetching Debian trixie's libonnxruntime-dev (headers) with a private apt configuration"
  A="$DEPS/apt"
  mkdir -p "$A/etc" "$A/state/lists/partial" "$A/cache/archives/partial" "$A/debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$A/etc/sources.list"
  APT_OPTS=(-o "Dir::Etc::SourceList=$A/etc/sources.list" -o Dir::Etc::SourceParts=/nonexistent
            -o "Dir::State=$A/state" -o "Dir::Cache=$A/cache" -o Dir::State::status=/dev/null
            -o Debug::NoLocking=1 -o APT::Sandbox::User=root -o Acquire::Languages=none)
  apt-get "${APT_OPTS[@]}" update -q >/dev/null
  (cd "$A/debs" && apt-get "${APT_OPTS[@]}" download libonnxruntime-dev >/dev/null)
  rm -rf "$A/x" && mkdir -p "$A/x" && dpkg-deb -x "$A"/debs/libonnxruntime-dev_*.deb "$A/x"
  hdr="$(dirname "$(find "$A/x" -name onnxruntime_cxx_api.h | head -1)")"
  mkdir -p "$ORT_INC" && cp "$hdr"/*.h "$ORT_INC/"
  rm -rf "$A/x" "$A/state/lists"  # keep the .deb only (85 KB), not trixie's 10 MB package list
fi

# 3. the ONNX Runtime library of the onnxruntime wheel, under the name it was linked with
ORT_LIB_DIR="$DEPS/onnxruntime/lib"
ORT_SO="$("$PY" - <<'PY'
import glob, os, onnxruntime
found = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.1.*")))
print(found[-1] if found else "")
PY
)"
[ -n "$ORT_SO" ] || { echo "install-deps: the onnxruntime wheel has no libonnxruntime.so.1.* (pip install onnxruntime)" >&2; exit 1; }
mkdir -p "$ORT_LIB_DIR"
ln -sfn "$ORT_SO" "$ORT_LIB_DIR/libonnxruntime.so.1"
ln -sfn libonnxruntime.so.1 "$ORT_LIB_DIR/libonnxruntime.so"

# 4. TensorRT headers from kernel-lens (download only, never installed)
TRT_INC="$DEPS/tensorrt/include"
if [ ! -f "$TRT_INC/NvInfer.h" ]; then
  say "pip download kernel-lens==2.0.1 (TensorRT 10.14 headers)"
  W="$DEPS/wheels"; mkdir -p "$W"
  "$PY" -m pip download -q --no-deps -d "$W" kernel-lens==2.0.1
  rm -rf "$DEPS/tensorrt" && mkdir -p "$TRT_INC"
  "$PY" - "$W" "$TRT_INC" <<'PY'
import glob, os, sys, zipfile
wheel = sorted(glob.glob(os.path.join(sys.argv[1], "kernel_lens-2.0.1-*.whl")))[-1]
with zipfile.ZipFile(wheel) as z:
    for n in z.namelist():
        if "/include/tensorrt/" in n and n.endswith(".h"):
            with open(os.path.join(sys.argv[2], os.path.basename(n)), "wb") as f:
                f.write(z.read(n))
PY
fi

# 5. CUDA headers (triton) and the CUDA runtime / TensorRT-RTX libraries of the wheels (link only)
"$PY" - "$DEPS" <<'PY'
import glob, importlib.util, os, sys
deps = sys.argv[1]
def where(mod):
    spec = importlib.util.find_spec(mod)
    return os.path.dirname(spec.origin) if spec and spec.origin else ""
def first(pattern):
    hits = sorted(glob.glob(pattern))
    return hits[-1] if hits else ""
sp = os.path.dirname(where("onnxruntime"))
triton = where("triton")
cuda_inc = os.path.join(triton, "backends", "nvidia", "include") if triton else ""
lines = {
    "DINOV3_PYTHON": sys.executable,
    "DINOV3_ORT_INCLUDE": os.path.join(deps, "onnxruntime", "include"),
    "DINOV3_ORT_LIB": os.path.join(deps, "onnxruntime", "lib", "libonnxruntime.so"),
    "DINOV3_TRT_INCLUDE": os.path.join(deps, "tensorrt", "include"),
    "DINOV3_CUDA_INCLUDE": cuda_inc if os.path.isfile(os.path.join(cuda_inc, "cuda.h")) else "",
    "DINOV3_CUDART_LIB": first(os.path.join(sp, "nvidia", "cu*", "lib", "libcudart.so.*")),
    "DINOV3_TRT_LIB": first(os.path.join(sp, "tensorrt_rtx_libs", "libtensorrt_rtx.so.*"))
                      or first(os.path.join(sp, "tensorrt_libs", "libnvinfer.so.*")),
}
text = "# written by engines/cpp/install-deps.sh\n" + "".join(f'set({k} "{v}")\n' for k, v in lines.items())
path = os.path.join(deps, "deps.cmake")
if not os.path.exists(path) or open(path).read() != text:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
for k, v in lines.items():
    if not v:
        print(f"install-deps: {k} not found (the TensorRT/CUDA build options need it)", file=sys.stderr)
PY
say "ok: $DEPS (cmake -S engines/cpp -B build/cpp && cmake --build build/cpp)"

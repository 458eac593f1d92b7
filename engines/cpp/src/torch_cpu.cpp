// PyTorch's CPU facts for the kernels matched bit for bit; torch_cpu.h says which and why.
#include "dinov3_deploy/torch_cpu.h"

#include <cstdlib>
#include <thread>

namespace dinov3_deploy {
namespace {

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? static_cast<int>(std::strtol(v, nullptr, 10)) : 0;
}

}  // namespace

int torch_threads() {
  static const int n = [] {
    const int env = env_int("DINOV3_TORCH_THREADS");
    return env > 0 ? env : static_cast<int>(std::thread::hardware_concurrency());
  }();
  return n;
}

int torch_vec_floats() {
  static const int n = [] {
    const int env = env_int("DINOV3_TORCH_VEC_FLOATS");
    if (env > 0) return env;
#if defined(__x86_64__) || defined(__i386__)
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    return avx512 ? 16 : 8;
#else
    return 4;  // NEON
#endif
  }();
  return n;
}

}  // namespace dinov3_deploy

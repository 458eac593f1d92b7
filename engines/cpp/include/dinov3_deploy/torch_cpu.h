// What the PyTorch run being matched does on its CPU, where that picks its arithmetic: its intra-op
// thread count (how parallel_for splits a loop, which kernel a resize takes) and the width of its
// vectorised kernels (which elements fall to a scalar tail).
#pragma once

namespace dinov3_deploy {

// DINOV3_TORCH_THREADS, else the core count (PyTorch's default).
int torch_threads();
// Floats per vector of PyTorch's dispatched kernels: 16 where it runs its AVX512 build (avx512f/bw/vl/dq),
// else 8 (AVX2); 4 off x86 (NEON, not measured: docs/cpp.md). DINOV3_TORCH_VEC_FLOATS overrides
// (8 for a PyTorch run under ATEN_CPU_CAPABILITY=avx2).
int torch_vec_floats();

}  // namespace dinov3_deploy

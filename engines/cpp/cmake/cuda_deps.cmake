# TensorRT and CUDA for the GPU parts, as imported targets:
#   dinov3_tensorrt       NvInfer*.h + the TensorRT runtime library (libnvinfer, or TensorRT-RTX's)
#   dinov3_cudart         cuda_runtime_api.h + libcudart
#   dinov3_cuda_driver    cuda.h + libcuda (the AOT stitch launches through the driver API)
# install-deps.sh points these at headers and wheel libraries that link but cannot run here; on a GPU
# machine or a Jetson pass the system's: -DDINOV3_TRT_INCLUDE=... -DDINOV3_TRT_LIB=... and so on.
foreach(var DINOV3_TRT_INCLUDE DINOV3_TRT_LIB DINOV3_CUDA_INCLUDE DINOV3_CUDART_LIB)
  if(NOT ${var} OR NOT EXISTS "${${var}}")
    message(FATAL_ERROR "${var} is not set or missing (run engines/cpp/install-deps.sh, or pass -D${var}=...)")
  endif()
endforeach()

add_library(dinov3_cudart SHARED IMPORTED)
set_target_properties(dinov3_cudart PROPERTIES IMPORTED_LOCATION "${DINOV3_CUDART_LIB}")
target_include_directories(dinov3_cudart SYSTEM INTERFACE "${DINOV3_CUDA_INCLUDE}")

add_library(dinov3_tensorrt SHARED IMPORTED)
set_target_properties(dinov3_tensorrt PROPERTIES IMPORTED_LOCATION "${DINOV3_TRT_LIB}")
target_include_directories(dinov3_tensorrt SYSTEM INTERFACE "${DINOV3_TRT_INCLUDE}")

# libcuda comes with the GPU driver, not with a toolkit or a wheel. Without one (a build machine, CI)
# the link goes against a stub whose functions only answer "no device": the binary is for GPU
# machines, where the driver's libcuda.so.1 is loaded instead (the stub keeps that soname).
find_library(DINOV3_CUDA_DRIVER_LIB NAMES cuda
  PATHS /usr/local/cuda/lib64/stubs /usr/local/cuda/targets/aarch64-linux/lib/stubs /usr/lib/aarch64-linux-gnu/tegra)
if(DINOV3_CUDA_DRIVER_LIB)
  add_library(dinov3_cuda_driver SHARED IMPORTED)
  set_target_properties(dinov3_cuda_driver PROPERTIES IMPORTED_LOCATION "${DINOV3_CUDA_DRIVER_LIB}")
  target_include_directories(dinov3_cuda_driver SYSTEM INTERFACE "${DINOV3_CUDA_INCLUDE}")
else()
  message(STATUS "dinov3: no libcuda found; linking the CUDA driver API against a stub (this build cannot run on a GPU "
                 "until it is relinked or run where libcuda.so.1 is installed)")
  add_library(dinov3_cuda_driver SHARED aot/cuda_driver_stub.c)
  target_include_directories(dinov3_cuda_driver SYSTEM PUBLIC "${DINOV3_CUDA_INCLUDE}")
  set_target_properties(dinov3_cuda_driver PROPERTIES OUTPUT_NAME cuda SOVERSION 1
                        LIBRARY_OUTPUT_DIRECTORY "${CMAKE_BINARY_DIR}/cuda-stub")
endif()

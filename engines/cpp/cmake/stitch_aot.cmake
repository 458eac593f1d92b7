# The GPU stitch: kernels/stitch.py compiled ahead of time by triton.tools.compile at build time
# (aot/gen_stitch.py), into C that embeds the cubin. DINOV3_CUDA_ARCH: the compute capability
# (90 H100/H200, 89 L4/4090, 87 Jetson Orin, 80 A100).
set(DINOV3_CUDA_ARCH 90 CACHE STRING "compute capability of the AOT stitch kernel")
if(NOT DINOV3_PYTHON)
  message(FATAL_ERROR "DINOV3_PYTHON (a Python with triton and dinov3-deploy) is not set: run install-deps.sh")
endif()
set(_aot_dir "${CMAKE_BINARY_DIR}/stitch_aot")
set(_kernel "${CMAKE_CURRENT_SOURCE_DIR}/../../kernels/stitch.py")
add_custom_command(
  OUTPUT "${_aot_dir}/dinov3_stitch_aot.c" "${_aot_dir}/dinov3_stitch_aot.h" "${_aot_dir}/dinov3_stitch_resize.c"
         "${_aot_dir}/dinov3_stitch_same.c"
  COMMAND ${CMAKE_COMMAND} -E env --unset=TRITON_INTERPRET CUDA_VISIBLE_DEVICES=
          "${DINOV3_PYTHON}" "${CMAKE_CURRENT_SOURCE_DIR}/aot/gen_stitch.py" "${_aot_dir}" --arch ${DINOV3_CUDA_ARCH}
  DEPENDS "${_kernel}" "${CMAKE_CURRENT_SOURCE_DIR}/aot/gen_stitch.py"
  COMMENT "triton.tools.compile: kernels/stitch.py -> C (sm_${DINOV3_CUDA_ARCH})"
  VERBATIM)
# Triton's two launchers (one per RESIZE variant) and the wrapper giving them stable names.
add_library(dinov3_stitch_aot STATIC "${_aot_dir}/dinov3_stitch_aot.c" "${_aot_dir}/dinov3_stitch_resize.c"
            "${_aot_dir}/dinov3_stitch_same.c")
target_include_directories(dinov3_stitch_aot PUBLIC "${_aot_dir}")
# Triton's template is third-party code: it calls exit() without <stdlib.h> and has a path without return.
target_compile_options(dinov3_stitch_aot PRIVATE -w -include stdlib.h)
set_target_properties(dinov3_stitch_aot PROPERTIES POSITION_INDEPENDENT_CODE ON)
target_link_libraries(dinov3_stitch_aot PUBLIC dinov3_cuda_driver)

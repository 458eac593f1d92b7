/* Link-time stand-in for libcuda.so.1 on machines without a GPU driver (CI compiles and links the
 * GPU stitch there, never runs it). It defines only the driver functions that Triton's AOT launcher
 * calls, each answering CUDA_ERROR_NO_DEVICE. On a GPU machine the driver's own libcuda.so.1 is
 * the one loaded. */
#include <cuda.h>

CUresult cuGetErrorString(CUresult error, const char** str) {
  (void)error;
  *str = "no CUDA driver (dinov3-deploy link stub)";
  return CUDA_SUCCESS;
}
CUresult cuModuleLoadData(CUmodule* module, const void* image) {
  (void)module; (void)image;
  return CUDA_ERROR_NO_DEVICE;
}
CUresult cuModuleUnload(CUmodule hmod) {
  (void)hmod;
  return CUDA_ERROR_NO_DEVICE;
}
CUresult cuModuleGetFunction(CUfunction* hfunc, CUmodule hmod, const char* name) {
  (void)hfunc; (void)hmod; (void)name;
  return CUDA_ERROR_NO_DEVICE;
}
CUresult cuDeviceGetAttribute(int* pi, CUdevice_attribute attrib, CUdevice dev) {
  (void)pi; (void)attrib; (void)dev;
  return CUDA_ERROR_NO_DEVICE;
}
CUresult cuFuncSetCacheConfig(CUfunction hfunc, CUfunc_cache config) {
  (void)hfunc; (void)config;
  return CUDA_ERROR_NO_DEVICE;
}
CUresult cuFuncSetAttribute(CUfunction hfunc, CUfunction_attribute attrib, int value) {
  (void)hfunc; (void)attrib; (void)value;
  return CUDA_ERROR_NO_DEVICE;
}
CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                        unsigned int by, unsigned int bz, unsigned int shared, CUstream stream, void** params,
                        void** extra) {
  (void)f; (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shared; (void)stream; (void)params;
  (void)extra;
  return CUDA_ERROR_NO_DEVICE;
}

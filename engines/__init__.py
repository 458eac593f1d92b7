"""TensorRT engines: strongly typed builds from ONNX through `tensorrt` or `tensorrt_rtx`
(trt_api.py holds every difference between the two, and binds Polygraphy's TensorRT loaders,
which configure and run the build, to the flavour chosen), optimisation profiles, caches, and the
engine runtime. Imports nothing heavy at import time."""

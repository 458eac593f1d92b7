"""TensorRT engines: strongly typed builds from ONNX through `tensorrt` or `tensorrt_rtx`
(trt_api.py holds every difference between the two), optimisation profiles, caches, and the
engine runtime. Imports nothing heavy at import time."""

"""dinov3-deploy: verified ONNX / TensorRT deployment of DINOv3 backbones and task heads.

Kept import-light on purpose: the CLI and the subpackages import what they need lazily.
"""

__version__ = "0.1.0"

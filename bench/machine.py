"""What a benchmark ran on: the facts a figure needs to be read (card, CPU, versions, date). The
one environment capture of every report, model or kernel."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    import torch

    info = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # Kernels timed under the interpreter run on the CPU, a Python loop per program: say so.
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
        "versions": {d: _version(d) for d in ("torch", "triton", "onnxruntime", "onnxruntime-gpu", "onnx",
                                              "tensorrt", "tensorrt-rtx-cu13", "dinov3-deploy")},
        "gpu": None,
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                       "memory_gib": round(p.total_memory / 2**30, 1), "cuda": torch.version.cuda,
                       "cudnn": torch.backends.cudnn.version()}
    return info


def device_label(info: dict) -> str:
    """One line naming where the figures come from (the head of every printed table)."""
    if info.get("gpu"):
        g = info["gpu"]
        return f"{g['name']} (sm {g['capability']}, {g['sms']} SMs)"
    dev = f"CPU: {info['cpu']} ({info['cpu_count']} cores)"
    return dev + (", Triton interpreter" if info.get("triton_interpret") else "")

"""The ONE place where `tensorrt` and `tensorrt_rtx` differ.

Both expose the same Python API for what we use (Builder, OnnxParser, strongly typed networks,
optimisation profiles, Runtime). What differs:

| | tensorrt | tensorrt_rtx |
|---|---|---|
| build needs a GPU | yes | no (ahead-of-time; kernels are JIT-compiled on the device) |
| builder cache | timing cache (`ITimingCache`, file reused across builds) | none at build time |
| runtime cache | none | `IRuntimeCache` of JIT kernels, attached to an `IRuntimeConfig` |
| targets | the build GPU | compute capabilities listed in the builder config (SM75..SM121) |
| runs on Hopper (SM90) | yes | no (refused at deserialisation) |

Everything else in `engines/` asks this module, never `import tensorrt` itself.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from dinov3_deploy.atomic import write_bytes
from dinov3_deploy.errors import DeployError, MissingDependencyError

FLAVORS = ("auto", "tensorrt", "tensorrt-rtx")
_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
_EXTRAS = {"tensorrt": "trt", "tensorrt-rtx": "rtx"}
# Targets of a TensorRT-RTX build when none are given: Ampere and newer consumer/workstation GPUs.
DEFAULT_RTX_TARGETS = ("SM80", "SM86", "SM89", "SM120")


@dataclass(frozen=True)
class TrtApi:
    flavor: str  # "tensorrt" | "tensorrt-rtx"
    trt: ModuleType

    @property
    def version(self) -> str:
        return self.trt.__version__

    @property
    def is_rtx(self) -> bool:
        return self.flavor == "tensorrt-rtx"

    # -- build-time differences ----------------------------------------------------------------
    def network_flags(self) -> int:
        """Strongly typed: precision comes from the ONNX graph (the only mode TensorRT 11 and
        TensorRT-RTX support; we use it for every TensorRT)."""
        return 1 << int(self.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    def configure(self, config, *, targets: list[str] | None = None, timing_cache: Path | None = None) -> dict:
        """Apply the flavour-specific builder settings; returns what was set (for the manifest)."""
        if self.is_rtx:
            names = [t.upper() for t in (targets or DEFAULT_RTX_TARGETS)]
            known = list(self.trt.ComputeCapability.__members__)
            bad = [t for t in names if t not in known or t in ("NONE",)]
            if bad:
                raise DeployError(f"unknown TensorRT-RTX target(s) {bad}; known: {[k for k in known if k != 'NONE']}")
            config.num_compute_capabilities = len(names)
            for i, name in enumerate(names):
                config.set_compute_capability(self.trt.ComputeCapability.__members__[name], i)
            return {"targets": names}
        if targets:
            raise DeployError("compute-capability targets apply to --trt-flavor tensorrt-rtx only; "
                              "tensorrt builds for the GPU it runs on")
        settings: dict = {"targets": ["build-gpu"]}
        if timing_cache is not None:
            blob = timing_cache.read_bytes() if timing_cache.exists() else b""
            cache = config.create_timing_cache(blob)
            config.set_timing_cache(cache, ignore_mismatch=False)
            settings["timing_cache"] = str(timing_cache)
        return settings

    def save_caches(self, config, settings: dict) -> None:
        """After a build: persist the timing cache (tensorrt); TensorRT-RTX has none at build time."""
        if self.is_rtx or "timing_cache" not in settings:
            return
        write_bytes(Path(settings["timing_cache"]), bytes(memoryview(config.get_timing_cache().serialize())))

    # -- run-time differences ------------------------------------------------------------------
    def create_context(self, engine, runtime_cache: Path | None = None):
        """An execution context; for TensorRT-RTX with a runtime cache of JIT kernels (loaded
        from and later saved to `runtime_cache`). Returns (context, save_fn)."""
        if not self.is_rtx:
            return engine.create_execution_context(), lambda: None
        rc = engine.create_runtime_config()
        cache = rc.create_runtime_cache()
        if runtime_cache is not None and runtime_cache.exists():
            cache.deserialize(runtime_cache.read_bytes())
        rc.set_runtime_cache(cache)
        ctx = engine.create_execution_context(rc)

        def save() -> None:
            if runtime_cache is not None:
                write_bytes(runtime_cache, bytes(memoryview(cache.serialize())))

        return ctx, save

    def runnable_here(self, targets: list[str]) -> tuple[bool, str]:
        """Can an engine of this flavour and these targets run on this machine?"""
        try:
            import torch

            if not torch.cuda.is_available():
                return False, "no CUDA GPU on this machine (engines need one to deserialise and run)"
            major, minor = torch.cuda.get_device_capability()
        except Exception as exc:  # noqa: BLE001 - any CUDA probe failure means: not runnable
            return False, f"CUDA unavailable ({exc})"
        sm = f"SM{major}{minor}"
        if self.is_rtx and sm not in targets:
            why = " (TensorRT-RTX does not run on Hopper)" if sm == "SM90" else ""
            return False, f"this GPU is {sm}, the engine targets {', '.join(targets)}{why}"
        return True, ""


def load_api(flavor: str = "auto") -> TrtApi:
    """Import the TensorRT flavour asked for. auto: `tensorrt` when it is installed and a GPU is
    present (it cannot build without one), else `tensorrt_rtx`, else `tensorrt`."""
    if flavor not in FLAVORS:
        raise DeployError(f"--trt-flavor must be one of {', '.join(FLAVORS)}, got '{flavor}'")
    if flavor != "auto":
        try:
            return TrtApi(flavor, importlib.import_module(_MODULES[flavor]))
        except ImportError as exc:
            raise MissingDependencyError(
                f"'{_MODULES[flavor]}' is not installed ({exc}). Install it with: "
                f"pip install 'dinov3-deploy[{_EXTRAS[flavor]}]'"
            ) from exc
    found = {}
    for name, module in _MODULES.items():
        try:
            found[name] = importlib.import_module(module)
        except ImportError:
            continue
    if not found:
        raise MissingDependencyError(
            "neither 'tensorrt' nor 'tensorrt_rtx' is installed; --format trt needs one. Install with: "
            "pip install 'dinov3-deploy[rtx]' (builds without a GPU) or 'dinov3-deploy[trt]'"
        )
    if "tensorrt" in found:
        import torch

        if torch.cuda.is_available() or "tensorrt-rtx" not in found:
            return TrtApi("tensorrt", found["tensorrt"])
    return TrtApi("tensorrt-rtx", found["tensorrt-rtx"])

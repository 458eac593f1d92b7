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

Polygraphy's TensorRT loaders build for us (`CreateConfig` / `CreateConfigRTX`, `Profile`,
`EngineBytesFromNetwork`). Polygraphy serves one flavour per process: each of its backend modules
binds a lazy `tensorrt` or `tensorrt_rtx` module when first imported, chosen by
`polygraphy.config.USE_TENSORRT_RTX` (read from `POLYGRAPHY_USE_TENSORRT_RTX` when polygraphy is
imported). `TrtApi.polygraphy()` sets that flag from our flavour before the first import, so the
`--trt-flavor` switch, not the environment, decides; a second flavour in the same process is refused.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from collections.abc import Iterator
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

    def polygraphy(self) -> ModuleType:
        """`polygraphy.backend.trt`, bound to this flavour (see the module docstring)."""
        from polygraphy import config
        from polygraphy.exception import PolygraphyException

        if "polygraphy.backend.trt" not in sys.modules:
            config.USE_TENSORRT_RTX = self.is_rtx
        import polygraphy.backend.trt as ptrt
        from polygraphy.backend.trt import loader

        with quiet_polygraphy():
            try:
                bound = loader.trt.__name__  # imports the module Polygraphy chose
            except PolygraphyException:
                bound = "tensorrt_rtx" if config.USE_TENSORRT_RTX else "tensorrt"
        if bound != self.trt.__name__:
            raise DeployError(
                f"Polygraphy's TensorRT backend is already bound to '{bound}' in this process and cannot switch "
                f"to '{self.trt.__name__}' (it picks one flavour per process); build {self.flavor} engines in a "
                "separate process"
            )
        return ptrt

    def create_config(self, profiles: list, *, workspace_bytes: int | None, opt_level: int,
                      targets: list[str] | None = None, timing_cache: Path | None = None) -> tuple[object, dict]:
        """Polygraphy's builder-config loader for this flavour, and what it sets (for the manifest).
        `profiles` are Polygraphy `Profile`s. TensorRT-RTX has no timing cache: `timing_cache` is ignored."""
        ptrt, trt = self.polygraphy(), self.trt
        common = {
            "profiles": profiles,
            "builder_optimization_level": opt_level,
            # TensorRT's own default; Polygraphy's (DETAILED) would put per-layer details into every engine
            "profiling_verbosity": trt.ProfilingVerbosity.LAYER_NAMES_ONLY,
        }
        if workspace_bytes is not None:
            common["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: workspace_bytes}
        if self.is_rtx:
            names = [t.upper() for t in (targets or DEFAULT_RTX_TARGETS)]
            known = [k for k in self.trt.ComputeCapability.__members__ if k != "NONE"]  # SMxy..., CURRENT
            bad = [t for t in names if t not in known]
            if bad:
                raise DeployError(f"unknown TensorRT-RTX target(s) {bad}; known: {known}")
            from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

            if "CURRENT" in names:  # the GPU of this machine: needs one, and excludes listed targets
                if len(names) > 1:
                    raise DeployError(f"TensorRT-RTX target CURRENT cannot be combined with others, got {names}")
                with quiet_polygraphy():
                    return CreateConfigRTX(use_gpu=True, **common), {"targets": names}
            # SM86 -> (8, 6), SM120 -> (12, 0): the minor version is the last digit
            caps = [(int(n[2:-1]), int(n[-1])) for n in names]
            with quiet_polygraphy():
                return CreateConfigRTX(compute_capabilities=caps, **common), {"targets": names}
        if targets:
            raise DeployError("compute-capability targets apply to --trt-flavor tensorrt-rtx only; "
                              "tensorrt builds for the GPU it runs on")
        settings: dict = {"targets": ["build-gpu"]}
        if timing_cache is not None:
            settings["timing_cache"] = str(timing_cache)
        with quiet_polygraphy():
            # tf32=False: TensorRT turns BuilderFlag.TF32 on by default, and Polygraphy's CreateConfig clears it
            # (config.clear_flag(trt.BuilderFlag.TF32)) unless tf32=True. An fp32 engine must compute in fp32:
            # with TF32 a 12-block stack moved by 2.7e-4 on an H200, above the fp32 parity gate (1e-4). A
            # missing timing cache file starts an empty cache, which save_caches then writes.
            return ptrt.CreateConfig(tf32=False, load_timing_cache=settings.get("timing_cache"), **common), settings

    def save_caches(self, config, settings: dict) -> None:
        """After a build: persist the timing cache (tensorrt); TensorRT-RTX has none at build time.
        Ours, not EngineBytesFromNetwork(save_timing_cache=...): Polygraphy rewrites the file in
        place, and a build killed mid-write would leave a truncated cache that the next build loads."""
        if self.is_rtx or "timing_cache" not in settings:
            return
        write_bytes(Path(settings["timing_cache"]), bytes(memoryview(config.get_timing_cache().serialize())))

    # -- run-time differences ------------------------------------------------------------------
    def create_context(self, engine, runtime_cache: Path | None = None,
                       cuda_graphs: bool = False) -> tuple[object, RuntimeCache | None]:
        """An execution context and, for TensorRT-RTX with a `runtime_cache` path, the cache of its
        JIT-compiled kernels (loaded from that file now; saved when the caller says so). Polygraphy has
        no runtime-cache API, so this is ours. `cuda_graphs` on TensorRT-RTX turns on its own capture
        (CudaGraphStrategy.WHOLE_GRAPH_CAPTURE: one graph per shape, taken after that shape's
        specialised kernels are compiled); an outside stream capture of an RTX engine needs engines
        built with REQUIRE_USER_ALLOCATION, which ours are not. Full TensorRT has no such switch: the
        caller captures (engines/runtime.py)."""
        if not self.is_rtx:
            return engine.create_execution_context(), None
        config = engine.create_runtime_config()
        if cuda_graphs:
            config.cuda_graph_strategy = self.trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        cache = config.create_runtime_cache()
        # deserialize() returns False, leaving the cache empty, when the file is from another GPU, driver
        # or TensorRT-RTX version: kernels are then compiled again and the file replaced on save.
        if runtime_cache is not None and runtime_cache.exists():
            cache.deserialize(runtime_cache.read_bytes())
        config.set_runtime_cache(cache)
        context = engine.create_execution_context(config)
        return context, (RuntimeCache(runtime_cache, config, cache) if runtime_cache is not None else None)

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


@dataclass
class RuntimeCache:
    """TensorRT-RTX's cache of the kernels it JIT-compiles while an engine runs, and its file. Holds
    the runtime config too, so that it lives as long as the execution context made from it."""

    path: Path
    config: object  # IRuntimeConfig
    cache: object  # IRuntimeCache

    def save(self) -> None:
        write_bytes(self.path, bytes(memoryview(self.cache.serialize())))


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


@contextlib.contextmanager
def quiet_polygraphy() -> Iterator[None]:
    """Silence Polygraphy's logger for a block: it prints to stdout (module loads, build configuration,
    timings), which would break into our progress display; its errors still raise PolygraphyException,
    which callers turn into a DeployError. Restores the previous severity on exit. Also hides the
    DeprecationWarning TensorRT-RTX raises because CreateConfig always attaches a timing cache (a no-op there)."""
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1), warnings.catch_warnings():  # above CRITICAL: nothing prints
        warnings.filterwarnings("ignore", ".*[Tt]iming cache operations are no-ops", DeprecationWarning)
        yield

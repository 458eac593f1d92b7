"""Strongly typed TensorRT engine builds from ONNX, as composable steps:

    api = load_api("auto")
    net = network_from_onnx("model.onnx", api)
    engine = build_engine(net, profiles_from_shapes(net, shapes), opt_level=3)  # no workspace limit
    engine.save("model.engine"); engine.facts     # size, I/O, layers, log: for the manifest

Engine facts are recorded at build time because reading them back from a serialised engine needs a GPU.

Polygraphy does the configuration and the build (`CreateConfig` / `CreateConfigRTX` with its
`Profile`s, chosen in trt_api.py, then `EngineBytesFromNetwork`). Ours, where Polygraphy does not fit:
* parsing (`network_from_onnx`): Polygraphy's `NetworkFromOnnxPath` creates the Builder with its one
  process-wide logger, and a builder keeps the logger it was created with; the manifest's build log
  needs a logger per build, and a parse error must say what failed (Polygraphy logs the parser's
  errors and raises "Could not parse ONNX correctly");
* saving (`BuiltEngine.save`): `SaveEngine` takes a deserialised engine, which needs a GPU, and
  writes in place; we write the serialised bytes atomically.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from dinov3_deploy.atomic import write_bytes
from dinov3_deploy.errors import DeployError
from dinov3_deploy.shapes import ShapeSpec

from .trt_api import TrtApi, load_api, quiet_polygraphy

MAX_LOG_LINES = 400


class EngineBuildError(DeployError):
    """The ONNX could not be parsed or the engine could not be built (the log says why)."""


def _make_logger(api: TrtApi):
    trt = api.trt

    class CapturingLogger(trt.ILogger):
        """Keeps the build log (INFO and above) for the manifest instead of printing it."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity, msg) -> None:
            if severity <= trt.ILogger.Severity.INFO:
                self.lines.append(f"[{str(severity).split('.')[-1]}] {msg}")

    return CapturingLogger()


@dataclass
class ParsedNetwork:
    api: TrtApi
    onnx_path: Path
    builder: object
    network: object
    parser: object
    logger: object

    def io(self) -> list[dict]:
        n = self.network
        tensors = [(n.get_input(i), "input") for i in range(n.num_inputs)]
        tensors += [(n.get_output(i), "output") for i in range(n.num_outputs)]
        return [{"name": t.name, "mode": mode, "dtype": str(t.dtype).split(".")[-1].lower(), "shape": list(t.shape)}
                for t, mode in tensors]


def network_from_onnx(onnx_path: str | os.PathLike, api: TrtApi | None = None) -> ParsedNetwork:
    """Parse an ONNX file (external data beside it is found) into a strongly typed network."""
    api = api or load_api()
    trt = api.trt
    logger = _make_logger(api)
    builder = trt.Builder(logger)
    network = builder.create_network(api.network_flags())
    parser = trt.OnnxParser(network, logger)
    path = Path(onnx_path)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise EngineBuildError(f"{api.flavor} {api.version} cannot parse {path}: {errors}")
    return ParsedNetwork(api, path, builder, network, parser, logger)


@dataclass(frozen=True)
class Profile:
    """One input's shape range, as the manifest records it (turned into a Polygraphy `Profile` to build)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def profiles_from_shapes(net: ParsedNetwork, shapes: ShapeSpec) -> list[Profile]:
    """One optimisation profile for the network's single input, from the artifact's ranges
    (NCHW float or NHWC uint8, told apart by the input's layout)."""
    if net.network.num_inputs != 1:
        raise EngineBuildError(f"expected one network input, found {net.network.num_inputs}")
    inp = net.network.get_input(0)
    nhwc = list(inp.shape)[-1] == 3 and list(inp.shape)[1] != 3
    dims = []
    for pick in ("min", "opt", "max"):
        b, h, w = (getattr(r, pick) for r in (shapes.batch, shapes.height, shapes.width))
        dims.append((b, h, w, 3) if nhwc else (b, 3, h, w))
    return [Profile(inp.name, *dims)]


_REQUESTED = re.compile(r"OutOfMemory \(Requested size was (\d+) bytes")


def memory_hint(log: list[str], workspace_bytes: int | None) -> str:
    """For a build that ran out of memory: which option to raise, and to what (from the size the
    builder asked for, rounded up to a whole GiB)."""
    sizes = [int(m.group(1)) for line in log for m in [_REQUESTED.search(line)] if m]
    if not sizes:
        return ""
    need = max(sizes)
    gib = -(-need // (1 << 30))
    if workspace_bytes is not None and need > workspace_bytes:
        return (f" (the builder asked for {need} bytes, more than --trt-workspace-gib "
                f"{workspace_bytes / (1 << 30):g}: raise it to {gib} or more, or omit it for no limit)")
    return (f" (the builder asked for {need} bytes and the machine could not give them: lower the largest "
            "shape (--batch / --height / --width maximum) or build on a machine with more memory)")


@dataclass
class BuiltEngine:
    data: bytes
    facts: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        write_bytes(path, self.data)
        return path


def build_engine(
    net: ParsedNetwork,
    profiles: list[Profile],
    *,
    workspace_gib: float | None = None,
    opt_level: int = 3,
    targets: list[str] | None = None,
    timing_cache: Path | None = None,
) -> BuiltEngine:
    """Build a serialised engine; the facts (for the manifest) include size, I/O, profile,
    network layer count, flavour settings and the build log. `workspace_gib` None: no limit of ours
    (TensorRT's default, the device's memory): a fixed default fails on large profiles (vits16 at
    8x3x1024x1024 asks for ~4.1 GiB)."""
    from polygraphy.exception import PolygraphyException

    api = net.api
    if not 0 <= opt_level <= 5:
        raise DeployError(f"builder optimisation level must be 0..5, got {opt_level}")
    if workspace_gib is not None and workspace_gib <= 0:
        raise DeployError(f"--trt-workspace-gib must be > 0 (or omitted: no limit), got {workspace_gib}")
    workspace = None if workspace_gib is None else int(workspace_gib * (1 << 30))
    ptrt = api.polygraphy()
    create_config, settings = api.create_config(
        [ptrt.Profile().add(p.name, p.min, p.opt, p.max) for p in profiles],
        workspace_bytes=workspace, opt_level=opt_level, targets=targets, timing_cache=timing_cache)
    t0 = time.perf_counter()
    with quiet_polygraphy():
        try:
            # The config object itself (not its loader) goes to the build: the timing cache is saved from it.
            config = create_config(net.builder, net.network)
            serialized = ptrt.EngineBytesFromNetwork((net.builder, net.network, net.parser), config=config)()
        except PolygraphyException as exc:
            tail = "\n".join(net.logger.lines[-20:])
            hint = memory_hint(net.logger.lines, workspace)
            raise EngineBuildError(f"{api.flavor} {api.version} failed to build an engine from {net.onnx_path}: "
                                   f"{exc}{hint}\n{tail}") from exc
    seconds = time.perf_counter() - t0
    # what the build ran with: the given limit, or TensorRT's default when none was given
    # (the GPU's memory; a TensorRT-RTX build without a GPU reports its own ceiling)
    workspace = int(config.get_memory_pool_limit(api.trt.MemoryPoolType.WORKSPACE))
    api.save_caches(config, settings)
    data = bytes(memoryview(serialized))
    facts = {
        "flavor": api.flavor,
        "version": api.version,
        **settings,
        "strongly_typed": True,
        "builder_optimization_level": opt_level,
        "workspace_bytes": workspace,
        "profiles": [{"input": p.name, "min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for p in profiles],
        "io": net.io(),
        "network_layers": net.network.num_layers,
        "engine_bytes": len(data),
        "build_seconds": round(seconds, 2),
        "build_log": net.logger.lines[-MAX_LOG_LINES:],
    }
    return BuiltEngine(data, facts)

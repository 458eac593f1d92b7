"""One backend vocabulary for every command: the name table, the one resolver, and what `auto`
selects for each command. `verify`, `infer` and `bench` once parsed `--backend` three times with three
meanings of `auto`; they now all resolve here.

A backend has two faces over the same model:
  numpy face   runners.py (`Backend.runner.run(batch) -> {name: np.ndarray}`): verification, the model bench;
  device face  device_backends.py (`face(x) -> {name: torch.Tensor}` on the backend's device): the Predictor.

Names: the long names `verify` reports (onnxruntime-cpu, ..., tensorrt-engine, onnx-reference, pytorch) and
the families (torch, onnxruntime, tensorrt) that stand for several of them. Whether a backend runs here is
answered by `skip_reason` without building any runner.
"""

from __future__ import annotations

from dinov3_deploy.errors import DeployError

ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
}


def ort_providers(provider: str) -> list:
    """The `providers` argument of an ONNX Runtime session for one of ORT_PROVIDERS. The CUDA
    provider computes fp32 MatMul/Conv in TF32 unless told not to (use_tf32 defaults to 1), which
    moves an fp32 graph past its parity gate: fp32 means fp32."""
    name = ORT_PROVIDERS[provider]
    return [(name, {"use_tf32": "0"})] if provider == "cuda" else [name]


ENGINE_BACKENDS = ("tensorrt-engine", "tensorrt-rtx-engine")
#: Every long name `verify` knows (pytorch: the PyTorch model, named through its family `torch`).
BACKEND_NAMES = (*(f"onnxruntime-{p}" for p in ORT_PROVIDERS), *ENGINE_BACKENDS, "onnx-reference")
#: Short names for a family of backends (`torch`: the PyTorch model in the artifact's precision).
BACKEND_FAMILIES = {
    "onnxruntime": tuple(f"onnxruntime-{p}" for p in ORT_PROVIDERS),
    "tensorrt": ENGINE_BACKENDS,
    "torch": ("pytorch",),
}
#: The Predictor's order of preference: on a GPU the engine, then ONNX Runtime on the GPU; then the CPU.
PREFERENCE_GPU = ("engine", "onnxruntime-tensorrt", "onnxruntime-cuda", "onnxruntime-cpu")
PREFERENCE_CPU = ("onnxruntime-cpu",)

#: What `--backend auto` selects, per command (each command's help says it).
AUTO_MEANS = {
    "verify": "auto: every backend of the artifact that runs here (the others are reported skipped, with why)",
    "infer": "auto: the best one that runs here: the engine, else ONNX Runtime on the GPU, on a GPU; "
             "ONNX Runtime on the CPU; else torch",
    "bench": "auto: the first of the artifact's backends that runs here (ONNX Runtime before the engine); "
             "all: every one",
}


def backend_help(command: str, prefix: str) -> str:
    """`--backend` help of `command`: its own prefix, then what auto selects for it."""
    return f"{prefix} {AUTO_MEANS[command]}."


# -- names --------------------------------------------------------------------------------------------

def parse_backend_names(spec: str | None, option: str = "--backend") -> list[str] | None:
    """`auto` / None -> None (the command's auto); else the named backends, families expanded, in
    order. An unknown name is an error naming the option and the known names."""
    if spec is None or spec.strip() in ("", "auto"):
        return None
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if part in BACKEND_FAMILIES:
            expanded = BACKEND_FAMILIES[part]
        elif part in BACKEND_NAMES:
            expanded = (part,)
        else:
            known = ", ".join(("auto", *BACKEND_NAMES, *BACKEND_FAMILIES))
            raise DeployError(f"{option}: unknown backend '{part}' (known: {known})")
        names += [n for n in expanded if n not in names]
    return names


SHORT_BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


def parse_backend(name: str, option: str = "--backend") -> tuple[str, str]:
    """One backend for the Predictor: 'onnxruntime-cuda' -> ('onnxruntime', 'cuda'); 'torch' or
    'pytorch' -> ('torch', ''); an engine name -> ('tensorrt', ''); else a one-line error. The
    onnx-reference evaluator is a verification backend, too slow to predict with."""
    if name in SHORT_BACKENDS:
        return name, ""
    if name == "pytorch":
        return "torch", ""
    if name.startswith("onnxruntime-") and name.removeprefix("onnxruntime-") in ORT_PROVIDERS:
        return "onnxruntime", name.removeprefix("onnxruntime-")
    if name in ENGINE_BACKENDS:
        return "tensorrt", ""
    long = ("pytorch", *BACKEND_FAMILIES["onnxruntime"], *ENGINE_BACKENDS)
    raise DeployError(f"unknown backend '{name}': {option} takes one of {', '.join((*SHORT_BACKENDS, *long))}")


# -- whether a backend runs here (no runner is built) ---------------------------------------------

def ort_skip_reason(artifact, provider: str) -> str:
    """Why ONNX Runtime with `provider` cannot run the artifact here ('' when it can)."""
    import onnxruntime as ort

    if ORT_PROVIDERS[provider] not in ort.get_available_providers():
        extra = " (GPU: pip install 'dinov3-deploy[gpu]')" if provider != "cpu" else ""
        return f"{ORT_PROVIDERS[provider]} is not in this onnxruntime build{extra}"
    if provider == "cpu" and artifact.precision == "bf16":
        return "ONNX Runtime's CPU provider has no bfloat16 kernels (Conv/MatMul)"
    if provider != "cpu":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU on this machine"
    plugins = artifact.manifest.onnx.plugins
    if plugins:
        return f"the graph holds TensorRT plugin nodes ({', '.join(plugins)}) that only TensorRT runs"
    return ""


def engine_name(artifact) -> str | None:
    """The artifact's engine backend name (tensorrt-engine / tensorrt-rtx-engine), None without one."""
    trt = artifact.manifest.tensorrt
    return f"{trt.flavor}-engine" if trt else None


def engine_skip_reason(artifact) -> str:
    """Why the artifact's engine cannot run here ('' when it can; a reason when there is none)."""
    trt = artifact.manifest.tensorrt
    if not trt:
        return "this artifact has no engine (export it with --format onnx,trt)"
    try:
        from dinov3_deploy.engines.trt_api import load_api

        ok, reason = load_api(trt.flavor).runnable_here(trt.targets)
    except DeployError as exc:
        return str(exc)
    return "" if ok else reason


def skip_reason(artifact, name: str) -> str:
    """Why the long-named backend cannot run the artifact here ('' when it can)."""
    if name.startswith("onnxruntime-"):
        return ort_skip_reason(artifact, name.removeprefix("onnxruntime-"))
    if name in ENGINE_BACKENDS:
        return engine_skip_reason(artifact) if name == engine_name(artifact) else (
            "the artifact has no engine of this flavour (export --format trt)")
    return ""


# -- the resolvers ------------------------------------------------------------------------------------

def best_backend(artifact, gpu: bool) -> tuple[str, str]:
    """infer's auto: the first of the preference order that runs here, else torch."""
    for choice in PREFERENCE_GPU if gpu else PREFERENCE_CPU:
        if choice == "engine":
            if engine_name(artifact) and not engine_skip_reason(artifact):
                return "tensorrt", ""
        elif not ort_skip_reason(artifact, choice.removeprefix("onnxruntime-")):
            return "onnxruntime", choice.removeprefix("onnxruntime-")
    return "torch", ""


def best_ort_provider(artifact) -> str:
    """`--backend onnxruntime` for the Predictor: the first provider (TensorRT, CUDA, CPU) that runs here."""
    reasons = {p: ort_skip_reason(artifact, p) for p in ("tensorrt", "cuda", "cpu")}
    for provider, reason in reasons.items():
        if not reason:
            return provider
    raise DeployError("--backend onnxruntime: no ONNX Runtime provider runs this artifact here: " + "; ".join(
        f"onnxruntime-{p}: {r}" for p, r in reasons.items()))


def resolve_for_predictor(artifact, name: str, gpu: bool) -> tuple[str, str]:
    """infer's selection: (family, detail) of the one backend the Predictor runs, checked runnable."""
    kind, detail = parse_backend(name)
    if kind == "auto":
        return best_backend(artifact, gpu)
    if kind == "onnxruntime":
        if not detail:
            return kind, best_ort_provider(artifact)
        reason = ort_skip_reason(artifact, detail)
        if reason:
            raise DeployError(f"--backend onnxruntime-{detail} cannot run here: {reason}")
    elif kind == "tensorrt":
        reason = engine_skip_reason(artifact)
        if reason:
            raise DeployError(f"--backend tensorrt cannot run here: {reason}" if engine_name(artifact)
                              else f"--backend tensorrt: {reason}")
    return kind, detail


def select_bench_targets(targets: list, spec: str) -> list:
    """bench's selection among an artifact's targets (numpy faces): all; auto: the first that runs
    here; or names (long names, or the families: onnxruntime = its runnable providers, tensorrt = its
    engine, torch = the PyTorch rows only, which are timed unless --no-pytorch)."""
    if spec == "all":
        return targets
    if spec == "auto":
        runnable = [t for t in targets if not t.skip_reason]
        if not runnable:
            raise DeployError("--backend auto: no backend of this artifact runs here: "
                              + "; ".join(f"{t.name}: {t.skip_reason}" for t in targets))
        return runnable[:1]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    family = {"onnxruntime": lambda t: t.name.startswith("onnxruntime-") and not t.skip_reason,
              "tensorrt": lambda t: t.name.endswith("-engine"), "torch": lambda t: False}
    unknown = [n for n in names if n not in family and n not in {t.name for t in targets}]
    if unknown:
        raise DeployError(f"--backend {', '.join(unknown)}: this artifact has {', '.join(t.name for t in targets)} "
                          "(or the short names torch, onnxruntime, tensorrt)")
    return [t for t in targets if t.name in names or any(family[n](t) for n in names if n in family)]


def e2e_backends(artifact, spec: str) -> list[str]:
    """bench --e2e's selection: Predictor backends, one row each (all: torch, onnxruntime and the engine)."""
    if spec == "all":
        return ["torch", "onnxruntime"] + (["tensorrt"] if artifact.manifest.tensorrt else [])
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for n in names:
        parse_backend(n)
    return names

"""A multi-head artifact against its single-head graphs: what running the backbone once saves.

A multi-head artifact exists because the backbone is most of the compute: seg + depth + cls in one
graph should cost little more than seg alone, where three single-head artifacts cost about three
times as much. `bench ARTIFACT` on a multi-head artifact therefore times, beside each of its targets,
every head alone on the same backbone weights, built the way export builds a graph (the same folds,
I/O contract, fp32 islands and opset, at the same shapes): a temporary ONNX file run by the same
ONNX Runtime provider for an ONNX Runtime target, the single-head DeployModule for a PyTorch target.
The rows go through the one harness; `comparison` turns them into the figures the goal is read from:
multi ms, each single ms, their sum, multi / seg-only and multi / sum.

Single-head rows carry `head` (the task) and `multi_target` (the multi-head target they stand
beside); their parity is checked against the reference's outputs of their task only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from .harness import Target, runner_target, torch_target

SINGLE = "single-head"
MULTI = "multi-head"


def single_name(target_name: str, task: str) -> str:
    return f"{target_name} [{task} only]"


def _islands_for(manifest, task: str) -> list:
    """The artifact's islands that exist in `task`'s single-head model: the backbone's (and the
    residual stream) keep their names, the head's move from `heads.<task>.` (MultiTaskModel) to
    `head.` (TaskModel); other heads' islands are dropped."""
    kept = []
    for island in manifest.fp32_islands:
        if island.module.startswith(f"heads.{task}."):
            kept.append(dataclasses.replace(island, module="head." + island.module.removeprefix(f"heads.{task}.")))
        elif not island.module.startswith("heads."):
            kept.append(island)
    return kept


def single_module(part_model, task: str, manifest, precision: str, *, folded: bool):
    """The single-head DeployModule of one head of a multi-head artifact: its I/O contract, islands and
    opset; `folded`: the exact folds export applies (the graph export writes), else the model as is
    (the PyTorch rows, like bench's multi-head ones)."""
    from dinov3_deploy.deploy_module import DeployModule, island_args

    io = manifest.io
    norm_folded = folded and any(f.kind == "normalization" for f in manifest.folds)
    model = part_model
    if folded:
        from dinov3_deploy.reference.models.fold import fold_all

        model, _ = fold_all(part_model, normalization=(io.mean, io.std) if norm_folded else None)
    return DeployModule(model, precision, seg_output=io.seg_output if task == "seg" else "logits",
                        uint8_input=io.uint8_input, mean=io.mean, std=io.std,
                        opset=manifest.onnx.opset, normalization_folded=norm_folded,
                        **island_args(_islands_for(manifest, task)))


def _prefixed(target: Target, task: str, outputs: list[str], multi_target: str) -> Target:
    """`target` (a single-head graph: outputs "logits", ...) as a row beside `multi_target`: its outputs
    renamed "<task>.<name>" to meet the multi-head reference's, and compared with those alone."""
    fetch = target.fetch

    def renamed(out):
        return {f"{task}.{k}": v for k, v in fetch(out).items()}

    return dataclasses.replace(target, name=single_name(multi_target, task), fetch=renamed, outputs=tuple(outputs),
                               info={**target.info, "graph": SINGLE, "head": task, "multi_target": multi_target})


def single_head_targets(artifact, source, multi_targets: list[Target], workdir: Path, device: str,
                        log: Callable[[str], None] = lambda msg: None) -> list[Target]:
    """For each multi-head target (ONNX Runtime providers and PyTorch rows; engines are not rebuilt
    here and get no single-head rows), one target per head alone. ONNX files go to `workdir`."""
    from dinov3_deploy.export.onnx_graph import export_onnx
    from dinov3_deploy.runtime.runners import OrtRunner

    manifest = artifact.manifest
    shapes = artifact.shapes()
    outputs = {h.task: list(h.outputs) for h in manifest.heads}
    ort = [t for t in multi_targets if t.name.startswith("onnxruntime-") and not t.skip_reason]
    torch_rows = [t for t in multi_targets if t.info.get("backend") == "pytorch" and not t.skip_reason]
    out: list[Target] = []
    if ort:
        backbone = source.parts[0].build_backbone("math")  # explicit-softmax attention, as export traces
        for part in source.parts:
            log(f"exporting the {part.task}-only graph")
            module = single_module(part.build("math", backbone=backbone), part.task, manifest, artifact.precision,
                                   folded=True)
            path = workdir / f"{part.task}-only.onnx"
            export_onnx(module, path, shapes)
            for t in ort:
                provider = t.name.removeprefix("onnxruntime-")
                single = runner_target(OrtRunner(path, provider), artifact.precision)
                single.info = {"backend": t.name}
                out.append(_prefixed(single, part.task, outputs[part.task], t.name))
    for t in torch_rows:
        impl, mode = t.info.get("attn_impl"), t.info.get("compile")
        backbone = source.parts[0].build_backbone(impl)
        for part in source.parts:
            module = single_module(part.build(impl, backbone=backbone), part.task, manifest, t.precision,
                                   folded=False)
            single = torch_target(module, t.name, t.precision, device, compile_mode=mode)
            single.info = dict(t.info)
            out.append(_prefixed(single, part.task, outputs[part.task], t.name))
    return out


def mark_multi(targets: list[Target]) -> None:
    """Tag the multi-head graph's own rows, so `comparison` finds them."""
    for t in targets:
        t.info = {**t.info, "graph": MULTI}


def comparison(rows: list[dict], tasks: list[str]) -> list[dict]:
    """Per multi-head row that was timed (target, shape): its median, each head's single-head median
    beside it, their sum, and the ratios multi / seg-only and multi / sum (None when a part is missing)."""
    result = []
    for r in rows:
        if r.get("graph") != MULTI or "median_ms" not in r:
            continue
        singles = {s["head"]: s.get("median_ms") for s in rows
                   if s.get("graph") == SINGLE and s.get("multi_target") == r["target"] and s["shape"] == r["shape"]}
        if not singles:
            continue
        complete = all(singles.get(t) is not None for t in tasks)
        total = sum(singles[t] for t in tasks) if complete else None
        seg = singles.get("seg")
        result.append({
            "target": r["target"], "shape": r["shape"], "multi_ms": r["median_ms"],
            "single_ms": {t: singles.get(t) for t in tasks},
            "sum_singles_ms": round(total, 4) if total is not None else None,
            # 4 significant digits, not decimals: a ratio far below 1 (a load spike) keeps its precision
            "multi_over_seg": float(f"{r['median_ms'] / seg:.4g}") if seg else None,
            "multi_over_sum": float(f"{r['median_ms'] / total:.4g}") if total else None,
        })
    return result

"""`verify`: every deployment backend of an artifact that can run here, against the fp32 PyTorch
reference, on deterministic real-looking images (reference/synthetic.py), at two input shapes
(the optimisation shape and a different batch/resolution, so dynamic shapes are exercised)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from dinov3_deploy.manifest import DeployIO, Manifest
from dinov3_deploy.runtime.runners import Backend, TorchRunner, artifact_backends
from dinov3_deploy.verification.parity import THRESHOLDS, ParityError, compare, output_gates

REPORT_SCHEMA = "dinov3-deploy-parity"


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    height: int
    width: int
    seed: int


def default_cases(shapes) -> list[Case]:
    """The opt shape (batch capped at 2 to keep CPU runs short) and a second shape that differs
    in batch, height and width from it wherever the ranges allow."""
    m = shapes.multiple
    b1 = min(max(shapes.batch.opt, min(2, shapes.batch.max)), 2)
    h1, w1 = shapes.height.opt, shapes.width.opt

    def other(r, v: int, step: int) -> int:
        for cand in (r.min, v + step, v - step, r.max):
            if cand != v and r.min <= cand <= r.max and cand % m == 0:
                return cand
        return v

    b2 = next((b for b in (1, 3, shapes.batch.max) if b != b1 and shapes.batch.min <= b <= shapes.batch.max), b1)
    b2 = min(b2, 3)
    h2 = other(shapes.height, h1, m)
    w2 = other(shapes.width, w1, 2 * m)
    if (h2, w2) == (h1, w1) or h2 == w2:
        w2 = next((c for c in (w1 + m, w1 - m, w2) if shapes.width.min <= c <= shapes.width.max and c != h2), w2)
    cases = [Case("opt", b1, h1, w1, 0)]
    if (b2, h2, w2) != (b1, h1, w1):
        cases.append(Case("dynamic", max(b2, shapes.batch.min), h2, w2, 100))
    return cases


def case_sizes(shapes) -> list[tuple[int, int]]:
    """The distinct input sizes (H, W) of default_cases, the opt size first: what an int8 / fp8
    export is calibrated and judged at."""
    sizes: list[tuple[int, int]] = []
    for c in default_cases(shapes):
        if (c.height, c.width) not in sizes:
            sizes.append((c.height, c.width))
    return sizes


def make_batch(case: Case, io: DeployIO) -> np.ndarray:
    """`case.batch` synthetic images in the artifact's input format (uint8 NHWC or normalised fp32 NCHW)."""
    from dinov3_deploy.reference.protocol.synthetic import make_sample

    images = np.stack([make_sample(case.seed + i, case.height, case.width)[0] for i in range(case.batch)])
    if io.uint8_input:
        return images
    mean = np.asarray(io.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(io.std, dtype=np.float32).reshape(1, 3, 1, 1)
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def reference_module(model, io: DeployIO):
    """The fp32 PyTorch reference of an artifact with this I/O contract, as verify and bench run it:
    SDPA attention (the model as people run it, not the export path)."""
    from dinov3_deploy.deploy_module import DeployModule

    model.backbone.set_attn_impl("sdpa")
    return DeployModule.from_io(model, "fp32", io)


def reference_model(manifest: Manifest, weights: str | None = None, head: str | None = None):
    """The artifact's fp32 TaskModel (MultiTaskModel), rebuilt from its manifest's model source."""
    from dinov3_deploy.model_source import source_from_manifest

    return source_from_manifest(manifest.source, weights=weights, head=head).build(attn_impl="sdpa")


def reference_runner(manifest: Manifest, model=None, weights: str | None = None,
                     head: str | None = None) -> TorchRunner:
    """The fp32 reference of the artifact (rebuilt from its manifest's model source unless given)."""
    if model is None:
        model = reference_model(manifest, weights, head)
    return TorchRunner(reference_module(model, manifest.io), name="pytorch-fp32")


def smallest_case(shapes) -> Case:
    """The smallest input the artifact accepts (a backend sized for small shapes runs this)."""
    return Case("smallest", shapes.batch.min, shapes.height.min, shapes.width.min, 0)


def backend_cases(be: Backend, cases: list[Case], shapes) -> tuple[list[Case], str]:
    """The cases a backend runs, and a note when they are not the common ones."""
    if be.max_pixels is None or all(c.batch * c.height * c.width <= be.max_pixels for c in cases):
        return cases, ""
    small = smallest_case(shapes)
    return [small], (f"sized for small shapes: ran at the smallest allowed input "
                     f"{small.batch}x{small.height}x{small.width} only")


def verify_artifact(
    artifact,
    *,
    model=None,
    weights: str | None = None,
    head: str | None = None,
    backends: list[Backend] | None = None,
    cases: list[Case] | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Run, compare and return the parity report (also the content of parity.json)."""
    manifest = artifact.manifest
    precision, task = manifest.precision, manifest.task
    shapes = artifact.shapes()
    cases = cases or default_cases(shapes)
    backends = backends if backends is not None else artifact_backends(artifact, reference="low-precision")
    log("building the fp32 PyTorch reference")
    if model is None:
        model = reference_model(manifest, weights, head)
    ref_runner = reference_runner(manifest, model)
    for be in backends:
        if be.name == "pytorch" and precision in ("int8", "fp8"):
            be.skip_reason = f"{precision} is a Q/DQ graph: PyTorch does not run it"
        if be.name == "pytorch" and be.runner is None and not be.skip_reason:
            from dinov3_deploy.deploy_module import DeployModule

            be.runner = TorchRunner(DeployModule.for_artifact(model, precision, manifest), name="pytorch")
    batches, refs = {}, {}

    def reference_for(case: Case) -> None:
        if case.name not in refs:
            shapes.check(case.batch, case.height, case.width)
            batches[case.name] = make_batch(case, manifest.io)
            log(f"reference on {case.batch}x{case.height}x{case.width} ({case.name})")
            refs[case.name] = ref_runner.run(batches[case.name])

    for case in cases:
        reference_for(case)
    rows, all_cases = [], list(cases)
    for be in backends:
        entry = {"name": be.name, "status": "skipped", "reason": be.skip_reason, "outputs": [], "seconds": None}
        if be.runner is not None:
            t0 = time.perf_counter()
            be_cases, note = backend_cases(be, cases, shapes)
            if note:
                entry["note"] = note
                log(f"{be.name}: {note}")
            all_cases += [c for c in be_cases if c not in all_cases]
            try:
                for case in be_cases:
                    reference_for(case)
                    log(f"{be.name} on {case.batch}x{case.height}x{case.width} ({case.name})")
                    out = be.runner.run(batches[case.name])
                    entry["outputs"] += [r.to_dict() for r in compare(refs[case.name], out, case.name, task, precision)]
                entry["status"] = "passed" if all(o["passed"] for o in entry["outputs"]) else "failed"
            except Exception as exc:  # noqa: BLE001 - a backend that crashes is a failed backend, reported
                entry["status"], entry["reason"] = "failed", f"{type(exc).__name__}: {exc}".strip()[:500]
            finally:
                close = getattr(be.runner, "close", None)
                if close:
                    close()
            entry["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(entry)
    ran = [r for r in rows if r["status"] != "skipped"]
    return {
        "schema": REPORT_SCHEMA,
        "task": task,
        "precision": precision,
        "reference": "PyTorch fp32 (SDPA attention), same weights",
        "inputs": "reference/synthetic.make_sample images",
        "thresholds": asdict(THRESHOLDS[precision]),
        # outputs judged by their own measured row instead (parity.OUTPUT_THRESHOLDS)
        "output_thresholds": output_gates(precision, [o.name for o in manifest.outputs]),
        "cases": [asdict(c) for c in all_cases],
        "backends": rows,
        "verified_backends": [r["name"] for r in ran if r["status"] == "passed"],
        "passed": bool(ran) and all(r["status"] == "passed" for r in ran),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def failure_message(report: dict) -> str:
    ran = [b for b in report["backends"] if b["status"] != "skipped"]
    if not ran:
        why = "; ".join(f"{b['name']}: {b['reason']}" for b in report["backends"])
        return f"no deployment backend can run this {report['precision']} artifact here ({why})"
    bad = []
    for b in ran:
        if b["status"] == "failed":
            fails = [f"{o['output']}[{o['case']}]: {', '.join(o['failures'])}" for o in b["outputs"] if not o["passed"]]
            bad.append(f"{b['name']}: " + ("; ".join(fails) if fails else b["reason"]))
    msg = "parity failed: " + " | ".join(bad)
    if any(f.startswith("label_agreement") for b in ran for o in b["outputs"] for f in (o.get("failures") or [])):
        msg += (". Labels flipped where the reference was not a near tie: find the first block that moves with "
                "`dinov3-deploy verify ARTIFACT --per-block`; every output's flips, near ties and bound are in "
                "the artifact's parity.json (labels: flips, near_tie_flips, bound_factor)")
    return msg


def raise_if_failed(report: dict, hint: str = "") -> None:
    if not report["passed"]:
        raise ParityError(failure_message(report) + (f". {hint}" if hint else ""))


def skipped_lines(backends: list[dict]) -> list[str]:
    """One short line per distinct reason, naming every backend it skips ("onnxruntime-cuda,
    onnxruntime-tensorrt: not in this onnxruntime build"), instead of a wrapped line per backend."""
    by_reason: dict[str, list[str]] = {}
    for b in backends:
        if b["status"] == "skipped":
            reason = b["reason"]
            for provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
                reason = reason.replace(f"{provider} is", "provider")
            by_reason.setdefault(reason, []).append(b["name"])
    return [f"{', '.join(names)}: {reason}" for reason, names in by_reason.items()]


def _labels_cell(o: dict) -> str:
    """The gated label agreement, and the near-tie flips it did not count."""
    if o.get("label_agreement") is None:
        return ""
    lp = o.get("labels") or {}
    ties = f" ({lp['near_tie_flips']} near-tie)" if lp.get("near_tie_flips") else ""
    return f"{o['label_agreement']:.3%}{ties}"


def render_report(report: dict, console) -> None:
    """The parity table (rich), thresholds underneath."""
    from rich.markup import escape
    from rich.table import Table

    th = report["thresholds"]
    table = Table(title=f"Parity vs {report['reference']} — {report['task']}, {report['precision']}")
    for col, justify in (("backend", "left"), ("output", "left"), ("input", "left"), ("rel fro", "right"),
                         ("min token cos", "right"), ("max abs", "right"), ("labels", "right"), ("result", "left")):
        table.add_column(col, justify=justify)
    cases = {c["name"]: c for c in report["cases"]}
    for b in report["backends"]:
        if b["status"] == "skipped":
            continue
        if not b["outputs"]:
            table.add_row(b["name"], "", "", "", "", "", "", f"[red]FAIL[/] {escape(b['reason'])}")
            continue
        for o in b["outputs"]:
            c = cases[o["case"]]
            fmt = lambda v, f: "" if v is None else format(v, f)
            table.add_row(
                b["name"], o["output"], f"{c['batch']}x{c['height']}x{c['width']}",
                fmt(o["rel_fro"], ".2e"), fmt(o["min_token_cos"], ".6f"), fmt(o["max_abs"], ".2e"),
                _labels_cell(o),
                "[green]pass[/]" if o["passed"] else f"[red]FAIL[/] {'; '.join(o['failures'])}",
            )
    console.print(table)
    for b in report["backends"]:
        if b.get("note"):
            console.print(f"[yellow]note[/] {escape(b['name'])}: {escape(b['note'])}", soft_wrap=True)
    for line in skipped_lines(report["backends"]):
        console.print(f"[yellow]skipped[/] {escape(line)}", soft_wrap=True)
    console.print(
        f"thresholds ({report['precision']}): rel fro <= {th['max_rel_fro']:.0e}, min token cos >= "
        f"{th['min_token_cos']}, labels >= {th['min_label_agreement']:.1%} (seg: pixels not flipped beyond the "
        "margin the measured logit error can close; near ties reported, not counted)"
    )
    for name, t in (report.get("output_thresholds") or {}).items():
        console.print(f"thresholds ({report['precision']} {name}, its own measured row): rel fro <= "
                      f"{t['max_rel_fro']:.0e}, min token cos >= {t['min_token_cos']}")
    verdict = "[green]PASSED[/]" if report["passed"] else "[red]FAILED[/]"
    console.print(f"parity {verdict}" + (f" on {', '.join(report['verified_backends'])}"
                                         if report["verified_backends"] else ""))

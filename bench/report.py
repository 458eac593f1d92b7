"""Benchmark reports: JSON (the record), Markdown (for READMEs and PRs), PNG (for people).

One envelope for every report, model bench (`dinov3-deploy bench`) or kernel bench
(kernels_bench.py):
    schema   SCHEMA
    kind     "model" | "kernel"
    machine  machine.machine_info(): card / CPU, versions, date_utc
    config   what was run (title, shapes, warm-up and iteration settings, ...)
    rows     one per timed case: target, shape, status ("ok" | "parity-failed" | "failed" |
             "skipped"), reason (when not timed), timing statistics (median/p10/p90/min ms,
             iters, clock), first_call_s, peak_mem_mb, parity (per output)
plus what the kind adds (a model report: reference and thresholds; a multi-head artifact's report:
`multi_head`, one entry per multi-head row: multi_ms, single_ms per head, sum_singles_ms,
multi_over_seg, multi_over_sum, from bench/multi_head.py).

    python -m dinov3_deploy.bench.report REPORT.json     # prints its Markdown table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dinov3_deploy.atomic import atomic_write, write_text

from .machine import device_label

SCHEMA = "dinov3-deploy-bench/2"
KINDS = ("model", "kernel")
STATUSES = ("ok", "parity-failed", "failed", "skipped")
TIMING_KEYS = ("median_ms", "p10_ms", "p90_ms", "min_ms", "iters", "clock")


def validate(report: dict) -> dict:
    """Raise ValueError naming the first thing that breaks the envelope; return the report."""
    for key in ("schema", "kind", "machine", "config", "rows"):
        if key not in report:
            raise ValueError(f"benchmark report lacks '{key}'")
    if report["schema"] != SCHEMA:
        raise ValueError(f"benchmark report schema '{report['schema']}', expected '{SCHEMA}'")
    if report["kind"] not in KINDS:
        raise ValueError(f"benchmark report kind '{report['kind']}' not in {KINDS}")
    for i, row in enumerate(report["rows"]):
        missing = [k for k in ("target", "shape", "status") if k not in row]
        if not missing:
            if row["status"] not in STATUSES:
                raise ValueError(f"row {i} ({row['target']} {row['shape']}): status '{row['status']}'")
            timed = row["status"] in ("ok", "parity-failed")
            missing = [k for k in (*TIMING_KEYS, "parity") if k not in row] if timed else (
                [] if "reason" in row else ["reason"])
        if missing:
            raise ValueError(f"row {i} of the benchmark report lacks {', '.join(missing)}")
    return report


def read_report(path: str | Path) -> dict:
    return validate(json.loads(Path(path).read_text()))


def _parity_cell(row: dict) -> str:
    if row.get("status") in ("skipped", "failed"):
        return row["status"]
    # Print only what was compared: end-to-end rows compare labels alone, and have no relative error.
    rels = [p["rel_fro"] for p in row["parity"] if p.get("rel_fro") is not None]
    labels = [p for p in row["parity"] if p.get("label_agreement") is not None]
    cells = [f"rel {max(rels):.1e}"] if rels else []
    if labels:
        cells.append(f"labels {min(p['label_agreement'] for p in labels):.2%}" + _near_ties(labels))
    return ", ".join(cells or ["not compared"]) + (" ok" if row["status"] == "ok" else " FAIL")


def _near_ties(parity: list[dict]) -> str:
    """The near-tie flips the label gate reported but did not count (parity.judge_labels)."""
    ties = sum((p.get("labels") or {}).get("near_tie_flips", 0) for p in parity)
    return f" ({ties} near-tie px)" if ties else ""


def markdown(report: dict) -> str:
    if report.get("kind") == "kernel":
        return kernel_markdown(report)
    m = report["machine"]
    dev = m["gpu"]["name"] if m["gpu"] else f"CPU: {m['cpu']} ({m['cpu_count']} cores)"
    lines = [
        f"# Benchmark: {report['config']['title']}",
        "",
        f"{dev}; torch {m['versions']['torch']}; {m['date_utc']}. Median of {report['config']['iters']} runs "
        f"after {report['config']['warmup']} warm-up"
        + (" (in rounds: one call of each target per round)" if report["config"].get("interleaved") else "")
        + f"; parity vs {report['reference']}.",
        "",
        "| target | input | median ms | p10-p90 ms | images/s | peak MiB | parity |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "median_ms" not in r:
            lines.append(f"| {r['target']} | {r['shape']} | - | - | - | - | {r['status']}: {r.get('reason', '')} |")
            continue
        mem = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
        lines.append(f"| {r['target']} | {r['shape']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f}-{r['p90_ms']:.2f} "
                     f"| {r['images_per_s']:.1f} | {mem} | {_parity_cell(r)} |")
    lines += _multi_head_lines(report)
    th = report["thresholds"]
    lines += ["", "Parity thresholds: " + "; ".join(
        f"{p}: rel fro <= {t['max_rel_fro']:.0e}, min token cos >= {t['min_token_cos']}, "
        f"labels >= {t['min_label_agreement']:.1%}" for p, t in th.items())
        + " (labels: pixels not flipped beyond the margin the measured logit error can close; near-tie flips "
        "are counted apart)"]
    return "\n".join(lines) + "\n"


def _multi_head_lines(report: dict) -> list[str]:
    """The multi-head table: the one graph against each head alone and against their sum."""
    entries = report.get("multi_head")
    if not entries:
        return []
    tasks = report["config"].get("tasks") or list(entries[0]["single_ms"])

    def ms(v):
        return "-" if v is None else f"{v:.2f}"

    def ratio(v):
        return "-" if v is None else f"{v:.2f}x"

    lines = ["", "## One multi-head graph vs single-head graphs (same backbone, median ms)", "",
             "| target | input | multi-head | " + " | ".join(f"{t} only" for t in tasks)
             + " | sum of singles | multi / seg-only | multi / sum |",
             "|---|---|---|" + "---|" * len(tasks) + "---|---|---|"]
    for e in entries:
        lines.append(f"| {e['target']} | {e['shape']} | {ms(e['multi_ms'])} | "
                     + " | ".join(ms(e["single_ms"].get(t)) for t in tasks)
                     + f" | {ms(e['sum_singles_ms'])} | {ratio(e['multi_over_seg'])} | {ratio(e['multi_over_sum'])} |")
    return lines


def kernel_markdown(report: dict) -> str:
    """One table per section; `speedup` is the section baseline's median over the row's (same shape),
    left out for rows that time only a part of the work (`component`)."""
    m, cfg = report["machine"], report["config"]
    baselines = cfg.get("baselines", {})
    lines = [f"# Benchmark: {cfg['title']}", "",
             f"{device_label(m)}; torch {m['versions']['torch']}, triton {m['versions']['triton']}; {m['date_utc']}.",
             "Kernels: median of triton.testing.do_bench samples (L2 flushed before each) on a GPU; models: "
             "CUDA events; perf_counter on the CPU. Parity vs each section's plain-PyTorch fp32 reference."]
    sections = list(dict.fromkeys(r.get("section", "") for r in report["rows"]))
    for sec in sections:
        rows = [r for r in report["rows"] if r.get("section", "") == sec]
        base = baselines.get(sec)
        med = {(r["target"], r["shape"]): r["median_ms"] for r in rows if "median_ms" in r}
        lines += ["", f"## {sec}" + (f" (speedup vs {base})" if base else ""), "",
                  "| target | shape | median ms | p10-p90 ms | TFLOP/s | speedup | dot | load path | parity |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            extra = f"{r.get('dot_precision') or '-'} | {r.get('load_path') or '-'}"
            if "median_ms" not in r:
                lines.append(f"| {r['target']} | {r['shape']} | - | - | - | - | {extra} | "
                             f"{r['status']}: {r.get('reason', '')} |")
                continue
            tf = f"{r['tflops']:.4g}" if r.get("tflops") else "-"
            b = med.get((base, r["shape"]))
            comparable = b and r["target"] != base and not r.get("component")
            speed = f"{b / r['median_ms']:.2f}x" if comparable else "-"
            lines.append(f"| {r['target']} | {r['shape']} | {r['median_ms']:.4g} | {r['p10_ms']:.4g}-{r['p90_ms']:.4g} "
                         f"| {tf} | {speed} | {extra} | {_kernel_parity_cell(r)} |")
    return "\n".join(lines) + "\n"


def _kernel_parity_cell(row: dict) -> str:
    if not row["parity"]:
        return "not checked"
    cells = []
    for p in row["parity"]:
        if p.get("rel_fro") is not None:
            cells.append(f"rel {p['rel_fro']:.1e}")
        if p.get("label_agreement") is not None:
            cells.append(f"labels {p['label_agreement']:.4%}" + _near_ties([p]))
    return ", ".join(cells) + (" ok" if row["status"] == "ok" else " FAIL")


def plot(report: dict, path: Path) -> None:
    """The latency figure of `report` as a PNG at `path` (nothing when no row was timed)."""
    import matplotlib.pyplot as plt

    fig = figure(report)
    if fig is None:
        return
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def figure(report: dict):
    """Grouped bars: median latency per target for each input shape, p10-p90 whiskers, the median
    written above each whisker. None when no row was timed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "median_ms" in r]
    if not rows:
        return None
    # a multi-head report: what running the heads as separate graphs costs, beside the one graph
    rows += [{"target": f"{e['target']} [sum of single heads]", "shape": e["shape"], "status": "ok",
              "median_ms": e["sum_singles_ms"], "p10_ms": e["sum_singles_ms"], "p90_ms": e["sum_singles_ms"]}
             for e in report.get("multi_head") or [] if e.get("sum_singles_ms") is not None]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    width = 0.8 / len(targets)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(shapes) * max(1, len(targets) / 2)), 4.5))
    for i, t in enumerate(targets):
        xs, ys, lo, hi, colors = [], [], [], [], []
        for j, s in enumerate(shapes):
            r = next((r for r in rows if r["target"] == t and r["shape"] == s), None)
            if r is None:
                continue
            xs.append(j + (i - (len(targets) - 1) / 2) * width)
            ys.append(r["median_ms"])
            lo.append(r["median_ms"] - r["p10_ms"])
            hi.append(r["p90_ms"] - r["median_ms"])
            colors.append(None if r["status"] == "ok" else "red")
        bars = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=t)
        for b, c, y, top in zip(bars, colors, ys, hi):
            if c:
                b.set_edgecolor(c)
                b.set_linewidth(2)
            # above the p90 whisker, not on the bar top where the error bar runs through the text
            ax.annotate(f"{y:.1f}", (b.get_x() + b.get_width() / 2, y + top), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(shapes)), shapes)
    ax.set_xlabel("input (batch x height x width)")
    ax.set_ylabel("median latency (ms)")
    m = report["machine"]
    dev = m["gpu"]["name"] if m["gpu"] else f"{m['cpu_count']}-core CPU"
    ax.set_title(f"{report['config']['title']} on {dev} (red edge = parity failed)", fontsize=9)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.08)  # room for the labels over the tallest whisker
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_report(report: dict, json_path: Path, *, png: bool = True) -> list[Path]:
    """report.json + report.md (+ report.png), each written atomically; returns the paths. The
    envelope is checked first: a report that does not match SCHEMA is never written."""
    report = validate({"schema": SCHEMA, "kind": "model", **report})
    write_text(json_path, json.dumps(report, indent=2) + "\n")
    md = json_path.with_suffix(".md")
    write_text(md, markdown(report))
    paths = [json_path, md]
    if png:
        plot(report, json_path.with_suffix(".png"))
        paths.append(json_path.with_suffix(".png"))
    return paths


def main(argv: list[str] | None = None) -> int:
    """Print the Markdown of each report named (how gpu_check.sh shows a run that was cut short)."""
    for path in (sys.argv[1:] if argv is None else argv):
        print(markdown(read_report(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

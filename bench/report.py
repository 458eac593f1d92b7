"""Benchmark reports: JSON (the record), Markdown (for READMEs and PRs), PNG (for people)."""

from __future__ import annotations

import json
from pathlib import Path

from dinov3_deploy.atomic import atomic_write, write_text

SCHEMA = "dinov3-deploy-bench/1"


def _parity_cell(row: dict) -> str:
    if row.get("status") in ("skipped", "failed"):
        return row["status"]
    worst = max((p["rel_fro"] or 0.0) for p in row["parity"]) if row["parity"] else 0.0
    labels = [p["label_agreement"] for p in row["parity"] if p.get("label_agreement") is not None]
    cell = f"rel {worst:.1e}"
    if labels:
        cell += f", labels {min(labels):.2%}"
    return cell + (" ok" if row["status"] == "ok" else " FAIL")


def markdown(report: dict) -> str:
    m = report["machine"]
    dev = m["gpu"]["name"] if m["gpu"] else f"CPU: {m['cpu']} ({m['cpu_count']} cores)"
    lines = [
        f"# Benchmark: {report['config']['title']}",
        "",
        f"{dev}; torch {m['versions']['torch']}; {m['date_utc']}. Median of {report['config']['iters']} runs "
        f"after {report['config']['warmup']} warm-up; parity vs {report['reference']}.",
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
    th = report["thresholds"]
    lines += ["", "Parity thresholds: " + "; ".join(
        f"{p}: rel fro <= {t['max_rel_fro']:.0e}, min token cos >= {t['min_token_cos']}, "
        f"labels >= {t['min_label_agreement']:.1%}" for p, t in th.items())]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Grouped bars: median latency per target for each input shape, p10-p90 whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "median_ms" in r]
    if not rows:
        return
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
        for b, c, y in zip(bars, colors, ys):
            if c:
                b.set_edgecolor(c)
                b.set_linewidth(2)
            ax.annotate(f"{y:.1f}", (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(shapes)), shapes)
    ax.set_xlabel("input (batch x height x width)")
    ax.set_ylabel("median latency (ms)")
    m = report["machine"]
    dev = m["gpu"]["name"] if m["gpu"] else f"{m['cpu_count']}-core CPU"
    ax.set_title(f"{report['config']['title']} on {dev} (red edge = parity failed)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def write_report(report: dict, json_path: Path, *, png: bool = True) -> list[Path]:
    """report.json + report.md (+ report.png), each written atomically; returns the paths."""
    report = {"schema": SCHEMA, **report}
    write_text(json_path, json.dumps(report, indent=2) + "\n")
    md = json_path.with_suffix(".md")
    write_text(md, markdown(report))
    paths = [json_path, md]
    if png:
        plot(report, json_path.with_suffix(".png"))
        paths.append(json_path.with_suffix(".png"))
    return paths

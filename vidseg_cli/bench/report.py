"""Markdown tables from bench JSON reports, so README tables are regenerated, not typed.

    python -m vidseg_cli.bench.report docs/bench/policies.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _fixed(key: str, digits: int, scale: float = 1.0):
    """A column of one number of each result, ``-`` where the result has none."""
    return lambda r: "-" if r.get(key) is None else f"{scale * r[key]:.{digits}f}"


def _latency(digits: int):
    return lambda r: "-" if r.get("fps") is None else f"{r['latency_ms_median']:.{digits}f} / {r['latency_ms_p90']:.{digits}f}"


# Columns every task's table has, defined once; each task's table adds its own.
_CONFIG = {"configuration": lambda r: r["config"]}
_BANK_KB = {"bank (KB)": lambda r: f"{r['bank_bytes'] / 1024:.0f}"}

_RESULT_COLUMNS = {
    **_CONFIG,
    "J&F": _fixed("J&F", 3), "J": _fixed("J", 3), "F": _fixed("F", 3),
    "FPS": _fixed("fps", 2), "model FPS": _fixed("model_fps", 2),
    "latency median / p90 (ms)": _latency(0),
    "GFLOPs / frame": _fixed("gflops", 1),
    "slots": lambda r: str(r["max_slots"]),
    "peak bank (MB)": _fixed("max_memory_mb", 1),
}

LONG_COLUMNS = {
    **_CONFIG,
    "slots at end": lambda r: str(r["slots_end"]),
    "bank MB at 10%": _fixed("memory_mb_at_10pct", 2), "bank MB at end": _fixed("memory_mb_end", 2),
    "latency ms, first / last 10%": lambda r: f"{r['latency_ms_first_10pct']:.0f} / {r['latency_ms_last_10pct']:.0f}",
}

PREDICT_COLUMNS = {
    **_CONFIG,
    "MSE / frame": _fixed("mse", 1), "MAE / frame": _fixed("mae", 1),
    "SSIM": _fixed("ssim", 3), "PSNR (dB)": _fixed("psnr", 2),
    "FPS": _fixed("fps", 1),
    "latency median / p90 (ms)": _latency(1),
    "GFLOPs / frame": _fixed("gflops", 3),
    **_BANK_KB,
}

def semseg_columns(report: dict) -> dict:
    """mIoU per scored source (a split, a split's corrupted frames) and consistency per
    clip source, as the run measured them; then speed and the memory's cost."""
    first = report["results"][0]
    columns = dict(_CONFIG)
    for source in first["scores"]:
        columns[f"{source} mIoU"] = lambda r, s=source: f"{100 * r['scores'][s]['miou']:.1f}"
    for source in first["consistency"]:
        columns[f"{source} consistency"] = lambda r, s=source: f"{r['consistency'][s]:.1f}"
    return {
        **columns,
        "FPS": _fixed("fps", 1), "model FPS": _fixed("model_fps", 1),
        "latency median / p90 (ms)": _latency(0),
        "GFLOPs / frame": _fixed("gflops", 1),
        "memory cost": lambda r: "-" if r.get("memory_cost") is None else f"{100 * r['memory_cost']:+.0f}%",
        **_BANK_KB,
    }


def markdown(report: dict) -> str:
    if report.get("task") == "semseg":
        columns = semseg_columns(report)
    elif report.get("task") == "predict":
        columns = dict(PREDICT_COLUMNS)
    else:
        columns = LONG_COLUMNS if "long" in report else dict(_RESULT_COLUMNS)
    if any(r.get("reuse", 1) < 1 or r.get("sparse", "none") != "none" for r in report["results"]):
        columns["frames reused"] = lambda r: f"{r['reuse_rate']:.3f}"
        columns["area computed"] = lambda r: f"{r['computed_share']:.3f}"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for result in report["results"]:
        lines.append("| " + " | ".join(cell(result) for cell in columns.values()) + " |")
    return "\n".join(lines) + "\n"


def pivot(report: dict, rows: str, columns: str, value: str) -> str:
    """One value laid out as a grid, e.g. J&F by update rule (rows) and slot count (columns)."""
    results = report["results"]
    row_keys = sorted({r[rows] for r in results})
    column_keys = sorted({r[columns] for r in results})
    cells = {(r[rows], r[columns]): r[value] for r in results}
    lines = [f"| {rows} \\ {columns} | " + " | ".join(str(c) for c in column_keys) + " |"]
    lines.append("|" + "---|" * (len(column_keys) + 1))
    for key in row_keys:
        values = [cells.get((key, c)) for c in column_keys]
        lines.append(f"| {key} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Print a bench JSON report as a Markdown table.")
    parser.add_argument("report", type=Path)
    parser.add_argument("--pivot", metavar="ROWS,COLUMNS,VALUE", help="e.g. update,slots,J&F")
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    if args.pivot:
        print(pivot(report, *args.pivot.split(",")), end="")
    else:
        print(markdown(report), end="")


if __name__ == "__main__":
    main()

"""Markdown tables from bench JSON reports, so README tables are regenerated, not typed.

    python -m vidseg_cli.bench.report docs/bench/policies.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_RESULT_COLUMNS = {
    "configuration": lambda r: r["config"],
    "J&F": lambda r: f"{r['J&F']:.3f}",
    "J": lambda r: f"{r['J']:.3f}",
    "F": lambda r: f"{r['F']:.3f}",
    "FPS": lambda r: f"{r['fps']:.2f}",
    "model FPS": lambda r: f"{r['model_fps']:.2f}",
    "latency median / p90 (ms)": lambda r: f"{r['latency_ms_median']:.0f} / {r['latency_ms_p90']:.0f}",
    "GFLOPs / frame": lambda r: "-" if r.get("gflops") is None else f"{r['gflops']:.1f}",
    "slots": lambda r: str(r["max_slots"]),
    "peak bank (MB)": lambda r: f"{r['max_memory_mb']:.1f}",
}

LONG_COLUMNS = {
    "configuration": lambda r: r["config"],
    "slots at end": lambda r: str(r["slots_end"]),
    "bank MB at 10%": lambda r: f"{r['memory_mb_at_10pct']:.2f}",
    "bank MB at end": lambda r: f"{r['memory_mb_end']:.2f}",
    "latency ms, first / last 10%": lambda r: f"{r['latency_ms_first_10pct']:.0f} / {r['latency_ms_last_10pct']:.0f}",
}

PREDICT_COLUMNS = {
    "configuration": lambda r: r["config"],
    "MSE / frame": lambda r: f"{r['mse']:.1f}",
    "MAE / frame": lambda r: f"{r['mae']:.1f}",
    "SSIM": lambda r: f"{r['ssim']:.3f}",
    "PSNR (dB)": lambda r: f"{r['psnr']:.2f}",
    "FPS": lambda r: "-" if r["fps"] is None else f"{r['fps']:.1f}",
    "latency median / p90 (ms)": lambda r: "-" if r["fps"] is None else f"{r['latency_ms_median']:.1f} / {r['latency_ms_p90']:.1f}",
    "GFLOPs / frame": lambda r: "-" if r.get("gflops") is None else f"{r['gflops']:.3f}",
    "bank (KB)": lambda r: f"{r['bank_bytes'] / 1024:.0f}",
}

SEMSEG_COLUMNS = {
    "configuration": lambda r: r["config"],
    "mIoU": lambda r: f"{100 * r['miou']:.1f}",
    "pixel acc.": lambda r: f"{100 * r['pixel_accuracy']:.1f}",
    "consistency": lambda r: "-" if r.get("consistency") is None else f"{100 * r['consistency']:.1f}",
    "FPS": lambda r: f"{r['fps']:.1f}",
    "model FPS": lambda r: f"{r['model_fps']:.1f}",
    "latency median / p90 (ms)": lambda r: f"{r['latency_ms_median']:.0f} / {r['latency_ms_p90']:.0f}",
    "GFLOPs / frame": lambda r: "-" if r.get("gflops") is None else f"{r['gflops']:.1f}",
    "bank (KB)": lambda r: f"{r['bank_bytes'] / 1024:.0f}",
}


def markdown(report: dict) -> str:
    if report.get("task") == "semseg":
        columns = dict(SEMSEG_COLUMNS)
    elif report.get("task") == "predict":
        columns = dict(PREDICT_COLUMNS)
    else:
        columns = LONG_COLUMNS if "long" in report else dict(_RESULT_COLUMNS)
    if any(r.get("reuse", 1) < 1 for r in report["results"]):
        columns["reuse rate"] = lambda r: f"{r['reuse_rate']:.3f}"
    if any(r.get("sparse", "none") != "none" for r in report["results"]):
        columns["gated work computed"] = lambda r: f"{r['computed_share']:.3f}"
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

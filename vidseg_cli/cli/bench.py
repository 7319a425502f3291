"""`vidseg bench`: accuracy and speed of configurations, side by side."""

from __future__ import annotations

import csv
import platform
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer
from rich.table import Table

from vidseg_cli import __version__
from vidseg_cli.bench.dataset import load_davis
from vidseg_cli.bench.long import long_run
from vidseg_cli.bench.runner import configs, run
from vidseg_cli.cli.common import print_json, stderr, user_errors
from vidseg_cli.engine.segment import DEFAULT_SIZE, use_all_cores
from vidseg_cli.errors import VidsegError
from vidseg_cli.synthetic import write_davis


def _split(text: str, cast=str) -> list:
    try:
        return [cast(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise VidsegError(f"cannot read {text!r} as a comma list") from None


@user_errors
def bench_command(
    data: Annotated[Optional[Path], typer.Option(help="Dataset in DAVIS layout [default: a built-in synthetic one].")] = None,
    sequences: Annotated[Optional[str], typer.Option(help="Comma list of sequence names to run.")] = None,
    model: Annotated[str, typer.Option(help="Comma list of VOS models.")] = "propagate",
    size: Annotated[str, typer.Option(help="Comma list of internal sizes.")] = str(DEFAULT_SIZE),
    memory: Annotated[str, typer.Option(help="Comma list of memory policies.")] = "stremn",
    slots: Annotated[str, typer.Option(help="Comma list of slot counts.")] = "5",
    update: Annotated[str, typer.Option(help="Comma list of stremn update rules.")] = "C",
    every: Annotated[str, typer.Option(help="Comma list of stm intervals.")] = "5",
    json: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
    csv_path: Annotated[Optional[str], typer.Option("--csv", help="Write one CSV row per configuration to FILE ('-' for stdout).")] = None,
    long: Annotated[Optional[int], typer.Option("--long", help="Stream a synthetic N-frame clip; report memory and latency against frame index.")] = None,
    sparse: Annotated[Optional[str], typer.Option(help="Sparse convolution modes (not available yet).")] = None,
    reuse: Annotated[Optional[str], typer.Option(help="Reuse-gate thresholds (not available yet).")] = None,
) -> None:
    """Measure DAVIS J&F and speed of every configuration, interleaved per sequence."""
    for name, value in (("--sparse", sparse), ("--reuse", reuse)):
        if value is not None:
            raise VidsegError(f"{name} is not available yet: the {name[2:]} mode has not landed in vidseg")
    use_all_cores()
    sweep = configs(_split(model), _split(size, int), _split(memory), _split(slots, int), _split(update), _split(every, int))
    if long is not None:
        _long(sweep, long, json)
        return
    with tempfile.TemporaryDirectory(prefix="vidseg-bench-") as scratch:
        root = data if data is not None else write_davis(Path(scratch))
        if not root.exists():
            raise VidsegError(f"dataset not found: {root}")
        loaded = load_davis(root)
        if sequences:
            wanted = set(_split(sequences))
            unknown = wanted - {s.name for s in loaded}
            if unknown:
                raise VidsegError(f"unknown sequence(s): {', '.join(sorted(unknown))}")
            loaded = [s for s in loaded if s.name in wanted]
        with stderr.status("benchmarking") as status:
            results, peak = run(loaded, sweep, progress=lambda text: status.update(text))
    report = {
        "dataset": str(data) if data else "synthetic",
        "sequences": [s.name for s in loaded],
        "frames": sum(len(s.truths) for s in loaded),
        "machine": _machine(),
        "peak_rss_mb": round(peak / 2**20, 1),
        "results": [r.summary() for r in results],
    }
    _table(report)
    if json:
        print_json(report)
    if csv_path:
        _write_csv(report["results"], csv_path)


def _long(sweep: list, length: int, as_json: bool) -> None:
    if length < 2:
        raise VidsegError("--long needs at least 2 frames")
    with stderr.status(f"streaming {length} synthetic frames"):
        series = [s.summary() for s in long_run(sweep, length)]
    columns = ("configuration", "slots at end", "bank MB at 10%", "bank MB at end", "ms first 10%", "ms last 10%")
    table = _new_table(f"synthetic {length}-frame clip (160x120)", columns)
    for s in series:
        table.add_row(
            s["config"], str(s["slots_end"]), f"{s['memory_mb_at_10pct']:.2f}", f"{s['memory_mb_end']:.2f}",
            f"{s['latency_ms_first_10pct']:.0f}", f"{s['latency_ms_last_10pct']:.0f}",
        )
    stderr.print(table)
    if as_json:
        print_json({"long": length, "machine": _machine(), "results": series})


def _write_csv(results: list[dict], path: str) -> None:
    """Flat rows: the per-sequence breakdown stays in the JSON."""
    rows = [{k: v for k, v in r.items() if k != "sequences"} for r in results]
    if path == "-":
        _csv_rows(rows, sys.stdout)
        return
    try:
        with open(path, "w", newline="") as handle:
            _csv_rows(rows, handle)
    except OSError as error:
        raise VidsegError(f"cannot write {path}: {error.strerror}") from None


def _csv_rows(rows: list[dict], handle) -> None:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "vidseg": __version__,
    }


def _new_table(title: str, columns: tuple[str, ...]) -> Table:
    """The configuration column left-aligned, numbers right-aligned."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == "configuration" else "right")
    return table


def _table(report: dict) -> None:
    title = f"{report['dataset']}: {len(report['sequences'])} sequences, {report['frames']} frames"
    columns = ("configuration", "J&F", "J", "F", "FPS", "model FPS", "median ms", "p90 ms", "slots", "memory MB")
    table = _new_table(title, columns)
    for r in report["results"]:
        table.add_row(
            r["config"], f"{r['J&F']:.3f}", f"{r['J']:.3f}", f"{r['F']:.3f}", f"{r['fps']:.2f}", f"{r['model_fps']:.2f}",
            f"{r['latency_ms_median']:.0f}", f"{r['latency_ms_p90']:.0f}", str(r["max_slots"]), f"{r['max_memory_mb']:.1f}",
        )
    stderr.print(table)
    m = report["machine"]
    stderr.print(f"{m['processor']}, {m['threads']} threads, torch {m['torch']}, peak RSS {report['peak_rss_mb']} MB")

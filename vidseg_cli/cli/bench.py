"""`vidseg bench`: accuracy and speed of configurations, side by side."""

from __future__ import annotations

import csv
import io
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.table import Table

from vidseg_cli import __version__
from vidseg_cli.bench.dataset import load_davis
from vidseg_cli.bench.long import LONG_HEIGHT, LONG_WIDTH, long_run
from vidseg_cli.bench.plots import plot_long, plot_results
from vidseg_cli.bench.report import LONG_COLUMNS
from vidseg_cli.bench.runner import FLOP_EVERY, configs, run
from vidseg_cli.cli.common import Device, comma_list, json_text, stderr, user_errors
from vidseg_cli.engine.segment import DEFAULT_SIZE, FUSIONS, pick_device, use_all_cores
from vidseg_cli.errors import VidsegError
from vidseg_cli.io.outputs import refuse_existing, resolve_output, write_file_atomically
from vidseg_cli.memory.policies import POLICIES
from vidseg_cli.models.registry import DEFAULT_VOS_MODEL
from vidseg_cli.synthetic import write_davis


@user_errors
def bench_command(
    data: Annotated[Path | None, typer.Option(help="Dataset in DAVIS layout (default: a built-in synthetic one).")] = None,
    sequences: Annotated[str | None, typer.Option(help="Comma list of sequence names to run.")] = None,
    model: Annotated[str, typer.Option(help="Comma list of VOS models.")] = DEFAULT_VOS_MODEL,
    size: Annotated[str | None, typer.Option(help=f"Comma list of internal sizes (default: {DEFAULT_SIZE}; with --long, {LONG_HEIGHT}).")] = None,
    memory: Annotated[str | None, typer.Option(help="Comma list of memory policies (default: stremn; with --long, all).")] = None,
    slots: Annotated[str, typer.Option(help="Comma list of slot counts.")] = "5",
    update: Annotated[str, typer.Option(help="Comma list of stremn update rules.")] = "C",
    every: Annotated[str, typer.Option(help="Comma list of stm intervals.")] = "5",
    fusion: Annotated[str, typer.Option(help="Comma list of stremn fusion cells: model (the model's own), training-free, none.")] = "model",
    device: Annotated[Device, typer.Option(help="Where to run.")] = Device.auto,
    json_path: Annotated[str | None, typer.Option("--json", metavar="FILE|-", help="Write the full report as JSON to FILE ('-' for stdout).")] = None,
    csv_path: Annotated[str | None, typer.Option("--csv", metavar="FILE|-", help="Write one CSV row per configuration to FILE ('-' for stdout).")] = None,
    plot: Annotated[Path | None, typer.Option(metavar="FILE.png", help="Plot J&F against FPS and memory against frame index.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing report files.")] = False,
    long: Annotated[int | None, typer.Option("--long", help="Stream a synthetic N-frame clip; report memory and latency against frame index.")] = None,
    sparse: Annotated[str, typer.Option(help="Comma list of SpVOS modes: none, static, residual, triple (frames written to memory run dense).")] = "none",
    sparse_gates: Annotated[str | None, typer.Option(metavar="NAME|FILE", help="Sparse gates; {mode} stands for the mode (default: MODEL-{mode} from weights.toml).")] = None,
    write_every: Annotated[int | None, typer.Option(metavar="N", help="Write a frame to memory every N frames (default: 1; 5 when --sparse lists a mode).")] = None,
    reuse: Annotated[str, typer.Option(metavar="TAUS", help="Comma list of Reuse-VOS gate thresholds (1: never reuse).")] = "1",
    reuse_mode: Annotated[str, typer.Option(help="Comma list of reuse modes: copy, fusion, refine.")] = "refine",
    reuse_heads: Annotated[str | None, typer.Option(metavar="NAME|FILE", help="Reuse heads (default: MODEL-reuse from weights.toml).")] = None,
    tta: Annotated[str, typer.Option(help="Comma list of test-time augmentations: none, flip.")] = "none",
) -> None:
    """Measure DAVIS J&F, speed, FLOPs and memory of every configuration, interleaved per sequence."""
    outputs = _Outputs(json_path, csv_path, plot, force, inputs=[data] if data is not None else [])
    use_all_cores()
    target = pick_device(device.value)
    if size is None:
        size = str(LONG_HEIGHT if long is not None else DEFAULT_SIZE)
    if memory is None:
        memory = ",".join(POLICIES) if long is not None else "stremn"
    fusions = tuple(comma_list(fusion))
    unknown = set(fusions) - set(FUSIONS)
    if unknown:
        raise VidsegError(f"unknown fusion {sorted(unknown)[0]!r}; choose from {', '.join(FUSIONS)}")
    sweep = configs(
        comma_list(model), comma_list(size, int), comma_list(memory), comma_list(slots, int), comma_list(update), comma_list(every, int), fusions,
        tuple(comma_list(reuse, float)), tuple(comma_list(reuse_mode)), reuse_heads,
        tuple(comma_list(sparse)), sparse_gates, write_every, tuple(comma_list(tta)),
    )
    if long is not None:
        _long(sweep, long, target, outputs)
        return
    with tempfile.TemporaryDirectory(prefix="vidseg-bench-") as scratch:
        root = data if data is not None else write_davis(Path(scratch))
        if not root.exists():
            raise VidsegError(f"dataset not found: {root}")
        loaded = _select(load_davis(root), sequences)
        with stderr.status("benchmarking") as status:
            results, peak = run(loaded, sweep, target, progress=lambda text: status.update(text))
    report = {
        "dataset": str(data) if data else "synthetic",
        "sequences": [s.name for s in loaded],
        "frames": sum(s.frame_count for s in loaded),
        "scored_frames": sum(len(s.scored) for s in loaded),
        "device": str(target),
        "machine": _machine(),
        "peak_rss_mb": round(peak / 2**20, 1),
        "results": [r.summary() for r in results],
    }
    _table(report)
    _say_sparse_annotations(loaded)
    outputs.write(report, plot_results)


def _say_sparse_annotations(loaded: list) -> None:
    """Where not every frame is annotated, say what J&F was computed on."""
    sparse = [s for s in loaded if s.annotated != list(range(s.frame_count))]
    if sparse:
        names = ", ".join(f"{s.name} ({len(s.annotated)} of {s.frame_count})" for s in sparse[:5])
        more = f" and {len(sparse) - 5} more" if len(sparse) > 5 else ""
        stderr.print(
            f"annotated frames only: {names}{more}; J and F score the annotated frames (paired by file name), "
            "less the first and the last, as DAVIS does",
            highlight=False,
        )


class _Outputs:
    """Where the report goes; file targets are checked before the (long) run starts."""

    def __init__(
        self, json_path: str | None, csv_path: str | None, plot: Path | None, force: bool, inputs: list[Path]
    ) -> None:
        self.json, self.csv, self.plot, self.force, self.inputs = json_path, csv_path, plot, force, inputs
        if plot is not None and plot.suffix.lower() != ".png":
            raise VidsegError(f"--plot writes PNG: give a .png path, not {plot}")
        files = [Path(p) for p in (json_path, csv_path) if p not in (None, "-")] + ([plot] if plot is not None else [])
        for path in files:
            refuse_existing(resolve_output(path, inputs), force)

    def write(self, report: dict, plotter: Callable[[dict, Path], None], rows: list[dict] | None = None) -> None:
        if self.json is not None:
            self._text(self.json, json_text(report))
        if self.csv is not None:
            self._text(self.csv, _csv_text(rows if rows is not None else report["results"]))
        if self.plot is not None:
            write_file_atomically(self.plot, lambda staging: plotter(report, staging), self.force, self.inputs)
            stderr.print(f"plot written to {self.plot}")

    def _text(self, path: str, text: str) -> None:
        if path == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        write_file_atomically(Path(path), lambda staging: staging.write_text(text), self.force, self.inputs)


def _select(loaded: list, names: str | None) -> list:
    if not names:
        return loaded
    wanted = set(comma_list(names))
    unknown = wanted - {s.name for s in loaded}
    if unknown:
        raise VidsegError(f"unknown sequence(s): {', '.join(sorted(unknown))}")
    return [s for s in loaded if s.name in wanted]


def _long(sweep: list, length: int, device: torch.device, outputs: _Outputs) -> None:
    if length < 2:
        raise VidsegError("--long needs at least 2 frames")
    with stderr.status(f"streaming {length} synthetic frames") as status:
        progress = lambda index: status.update(f"streaming {length} synthetic frames: {index}")  # noqa: E731
        series = [s.summary() for s in long_run(sweep, length, device, progress)]
    table = _new_table(f"synthetic {length}-frame clip ({LONG_WIDTH}x{LONG_HEIGHT})", tuple(LONG_COLUMNS))
    for s in series:
        table.add_row(*(cell(s) for cell in LONG_COLUMNS.values()))
    stderr.print(table)
    report = {"long": length, "device": str(device), "machine": _machine(), "results": series}
    outputs.write(report, plot_long, rows=[{k: v for k, v in s.items() if k != "series"} for s in series])


def _csv_text(results: list[dict]) -> str:
    """Flat rows: per-sequence breakdowns and series stay in the JSON."""
    rows = [{k: v for k, v in r.items() if k not in ("sequences", "series")} for r in results]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


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
    title = f"{report['dataset']}: {len(report['sequences'])} sequences, {report['frames']} frames ({report['scored_frames']} scored)"
    cuda = report["device"].startswith("cuda")
    reusing = any(r["reuse"] < 1 for r in report["results"])
    sparse = any(r.get("sparse", "none") != "none" for r in report["results"])
    columns = ("configuration", "J&F", "J", "F", "FPS", "model FPS", "median ms", "p90 ms", "GFLOPs", "slots", "bank MB")
    extra = (("reuse rate",) if reusing else ()) + (("computed",) if sparse else ()) + (("CUDA peak MB",) if cuda else ())
    table = _new_table(title, columns + extra)
    for r in report["results"]:
        gflops = "-" if r["gflops"] is None else f"{r['gflops']:.1f}"
        table.add_row(
            r["config"], f"{r['J&F']:.3f}", f"{r['J']:.3f}", f"{r['F']:.3f}", f"{r['fps']:.2f}", f"{r['model_fps']:.2f}",
            f"{r['latency_ms_median']:.0f}", f"{r['latency_ms_p90']:.0f}", gflops, str(r["max_slots"]),
            f"{r['max_memory_mb']:.1f}", *((f"{r['reuse_rate']:.3f}",) if reusing else ()),
            *((f"{r['computed_share']:.3f}",) if sparse else ()),
            *((f"{r['peak_cuda_mb']:.0f}",) if cuda else ()),
        )
    stderr.print(table)
    m = report["machine"]
    stderr.print(
        f"{report['device']}: {m['processor']}, {m['threads']} threads, torch {m['torch']}, "
        f"peak RSS {report['peak_rss_mb']} MB; GFLOPs counted on every {FLOP_EVERY}th frame, which is left out of the timings"
    )

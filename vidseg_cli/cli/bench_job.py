"""The bench command's body: build the sweep, run it over a dataset (or a long synthetic
clip), print and write the report. The measuring itself is in bench/."""

from __future__ import annotations

import csv
import io
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from rich.table import Table

from vidseg_cli import __version__
from vidseg_cli.bench.plots import plot_long, plot_prediction, plot_results, plot_semseg
from vidseg_cli.bench.report import LONG_COLUMNS, PREDICT_COLUMNS, semseg_columns
from vidseg_cli.cli.common import comma_list, json_text, stderr
from vidseg_cli.engine.job import pick_device
from vidseg_cli.engine.threads import use_all_cores
from vidseg_cli.errors import VidsegError
from vidseg_cli.io.outputs import refuse_existing, resolve_output, write_file_atomically
from vidseg_cli.models.registry import learned_runtime
from vidseg_cli.options import DEFAULT_SIZE, FUSIONS, LONG_HEIGHT, LONG_WIDTH, POLICIES
from vidseg_cli.predict.bench import load_models, predict_configs, run_predict_bench, test_sequences
from vidseg_cli.semseg.bench import consistency_videos, memory_cost, run_semseg_bench, semseg_configs
from vidseg_cli.synthetic import write_davis
from vidseg_cli.vos.bench import FLOP_EVERY, configs, run
from vidseg_cli.vos.davis import load_davis
from vidseg_cli.vos.long import long_run
from vidseg_cli.vos.oracle import oracle_bound

# the built-in benchmark: six synthetic scenes of 50 frames at 480x270, with 2 and 3 objects
BENCH_SET = {"sequences": 6, "length": 50, "height": 270, "width": 480, "style": "scene"}


def bench(
    *, data: Path | None, sequences: str | None, model: str, size: str | None, memory: str | None, slots: str,
    update: str, every: str, fusion: str, device: str, json: bool, report: Path | None, csv_path: str | None,
    plot: Path | None, force: bool, long: int | None, sparse: str, write_every: str | None,
    reuse: str, gates: str | None, tta: str, runtime: str = "torch", profile: bool = False,
) -> None:
    """Measure DAVIS J&F, speed, FLOPs and memory of every configuration, interleaved per sequence."""
    outputs = _Outputs(json, report, csv_path, plot, force, inputs=[data] if data is not None else [])
    use_all_cores()
    target = pick_device(device)
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
        tuple(comma_list(reuse, float)), tuple(comma_list(gates)) if gates else (None,),
        tuple(comma_list(sparse)), tuple(comma_list(write_every, int)) if write_every else (1,), tuple(comma_list(tta)),
        tuple(comma_list(runtime)),
    )
    if long is not None:
        _long(sweep, long, target, outputs)
        return
    with tempfile.TemporaryDirectory(prefix="vidseg-bench-") as scratch:
        root = data if data is not None else write_davis(Path(scratch), **BENCH_SET)
        if not root.exists():
            raise VidsegError(f"dataset not found: {root}")
        loaded = _select(load_davis(root), sequences)
        with stderr.status("benchmarking") as status:
            results, peak = run(loaded, sweep, target, progress=lambda text: status.update(text), profile=profile)
    summary = {
        "dataset": str(data) if data else "synthetic",
        "sequences": [s.name for s in loaded],
        "frames": sum(s.frame_count for s in loaded),
        "scored_frames": sum(len(s.scored) for s in loaded),
        "device": str(target),
        "machine": _machine(),
        "peak_rss_mb": round(peak / 2**20, 1),
        "results": [r.summary() for r in results],
    }
    if any(r.config.reuse.enabled or r.config.sparse.enabled for r in results):
        bound = oracle_bound(loaded)
        summary["oracle"] = {"threshold": bound.threshold, "reuse_rate": round(bound.reused, 4), "loss": round(bound.loss, 2), "speedup": round(bound.speedup, 2)}
    _table(summary)
    if profile:
        _profile_table(summary)
    _say_oracle(summary.get("oracle"))
    _say_sparse_annotations(loaded)
    outputs.write(summary, plot_results)


def _profile_table(report: dict) -> None:
    """Stages as rows, configurations as columns: median / p90 ms per frame."""
    stages = list(dict.fromkeys(name for r in report["results"] for name in r["profile"]))  # each in pipeline order
    table = _new_table("per frame, by stage: median / p90 (ms)", ("stage", *(r["config"] for r in report["results"])))
    for name in stages:
        cells = [r["profile"].get(name) for r in report["results"]]
        table.add_row(name, *("-" if c is None else f"{c['median_ms']:.1f} / {c['p90_ms']:.1f}" for c in cells))
    stderr.print(table)


def bench_predict(
    *, data: Path | None, limit: int | None, timed: int, model: str, memory: str, slots: str, update: str,
    device: str, json: bool, report: Path | None, csv_path: str | None, plot: Path | None, force: bool,
) -> None:
    """Video prediction on held-out Moving MNIST, or on videos: copy-last and every configuration."""
    outputs = _Outputs(json, report, csv_path, plot, force, inputs=[data] if data is not None else [])
    use_all_cores()
    target = pick_device(device)
    sweep = predict_configs(comma_list(model), comma_list(memory), comma_list(slots, int), comma_list(update))
    models = load_models(sweep, target)
    name, stream, count = test_sequences(data, limit, models)
    with stderr.status("benchmarking") as status:
        results = run_predict_bench(sweep, models, stream, target, timed, progress=lambda text: status.update(text))
    summary = {
        "task": "predict",
        "dataset": name,
        "sequences": count,
        "device": str(target),
        "machine": _machine(),
        "results": [r.summary() for r in results],
    }
    _predict_table(summary)
    outputs.write(summary, plot_prediction, rows=[{k: v for k, v in r.items() if k != "per_horizon"} for r in summary["results"]])


def bench_semseg(
    *, data: Path | None, split: str, model: str, memory: str, slots: str, read: str | None, radius: str | None,
    size: str | None, runtime: str, consistency: Path | None, corrupt: bool, device: str, json: bool, report: Path | None,
    csv_path: str | None, plot: Path | None, force: bool, far: int | None = None,
) -> None:
    """Semantic segmentation: mIoU per split (and on corrupted frames), temporal consistency, speed."""
    if data is None:
        raise VidsegError("--task semseg needs --data: labelled video in CamVid's layout (or images/, labels/)")
    if not data.exists():
        raise VidsegError(f"dataset not found: {data}")
    splits = comma_list(split)
    if not splits:
        raise VidsegError("--split names at least one split, e.g. val or val,test")
    videos = consistency_videos(consistency)
    inputs = [p for p in (data, consistency) if p is not None]
    outputs = _Outputs(json, report, csv_path, plot, force, inputs=inputs)
    use_all_cores()
    target = pick_device(device)
    reads = comma_list(read) if read else [None]
    radii = comma_list(radius, int) if radius else [None]
    runtimes = [learned_runtime(target) if name == "auto" else name for name in comma_list(runtime)]  # every semseg model is learned
    sweep = semseg_configs(
        comma_list(model), comma_list(memory), comma_list(slots, int), reads, radii, comma_list(size, int) if size else [None],
        list(dict.fromkeys(runtimes)),
    )
    with stderr.status("benchmarking") as status:
        results = run_semseg_bench(sweep, data, splits, target, videos, corrupt, progress=lambda text: status.update(text), far=far)
    summary = {
        "task": "semseg",
        "dataset": f"{data} ({', '.join(splits)})",
        "corrupted": "every third frame, seed 0 (vidseg_cli/semseg/corrupt.py), scored on those frames" if corrupt else None,
        "far": f"each split's frames dealt into clips of frames {far} video frames apart" if far else None,
        "consistency_videos": [str(v) for v in videos],
        "device": str(target),
        "machine": _machine(),
        "results": [r.summary() for r in results],
    }
    memory_cost(summary["results"])
    columns = semseg_columns(summary)
    table = _new_table(summary["dataset"], tuple(columns))
    for r in summary["results"]:
        table.add_row(*(cell(r) for cell in columns.values()))
    stderr.print(table)
    outputs.write(summary, plot_semseg, rows=[_semseg_row(r) for r in summary["results"]])


def _semseg_row(result: dict) -> dict:
    """One flat CSV row: every score and consistency under its own column."""
    row = {k: v for k, v in result.items() if k not in ("class_iou", "scores", "consistency")}
    row |= {f"iou_{k}": v for k, v in result["class_iou"].items()}
    row |= {f"miou_{source}": s["miou"] for source, s in result["scores"].items()}
    return row | {f"consistency_{source}": v for source, v in result["consistency"].items()}


def _predict_table(report: dict) -> None:
    table = _new_table(f"{report['dataset']}: {report['sequences']} sequences, 10 frames predicted from 10",
                       tuple(PREDICT_COLUMNS))
    for r in report["results"]:
        table.add_row(*(cell(r) for cell in PREDICT_COLUMNS.values()))
    stderr.print(table)


def _say_oracle(oracle: dict | None) -> None:
    """The most a reuse gate could reuse within 1 J&F point, knowing the true masks (vos/oracle.py)."""
    if oracle is not None:
        stderr.print(
            f"oracle bound: a gate that knows the true masks reuses {oracle['reuse_rate']:.3f} of the frames "
            f"(copying while IoU >= {oracle['threshold']:.2f}, {oracle['loss']:.1f} J&F points lost): "
            f"at most {oracle['speedup']:.2f}x even if a reused frame cost nothing",
            highlight=False,
        )


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
        self, json: bool, report: Path | None, csv_path: str | None, plot: Path | None, force: bool, inputs: list[Path]
    ) -> None:
        self.stdout_json, self.report, self.csv, self.plot = json, report, csv_path, plot
        self.force, self.inputs = force, inputs
        if json and csv_path == "-":
            raise VidsegError("--json and --csv - both write to stdout: give --csv a FILE")
        if plot is not None and plot.suffix.lower() != ".png":
            raise VidsegError(f"--plot writes PNG: give a .png path, not {plot}")
        files = [p for p in (report, plot) if p is not None] + ([Path(csv_path)] if csv_path not in (None, "-") else [])
        for path in files:
            refuse_existing(resolve_output(path, inputs), force)

    def write(self, report: dict, plotter: Callable[[dict, Path], None], rows: list[dict] | None = None) -> None:
        if self.stdout_json:
            self._text("-", json_text(report))
        if self.report is not None:
            self._text(str(self.report), json_text(report))
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
    """Flat rows: per-sequence breakdowns and series stay in the JSON; a profile's stages
    become a median and a p90 column each."""
    rows = [{k: v for k, v in r.items() if k not in ("sequences", "series", "profile")} for r in results]
    for row, result in zip(rows, results, strict=True):
        for name, stage in result.get("profile", {}).items():
            row |= {f"{name} median ms": stage["median_ms"], f"{name} p90 ms": stage["p90_ms"]}
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


def _shares(row: dict) -> tuple[str, ...]:
    """Region steps and reuse: the share of frames that ran nothing (the last result handed
    on), and of the area computed afresh, handed on from the last output, and set to
    background without work."""
    computed, skipped = row["computed_share"], row.get("skipped_share", 0.0)
    shares = (row["reuse_rate"], computed, max(0.0, 1 - computed - skipped), skipped)
    return tuple(f"{share:.3f}" for share in shares)


def _table(report: dict) -> None:
    title = f"{report['dataset']}: {len(report['sequences'])} sequences, {report['frames']} frames ({report['scored_frames']} scored)"
    cuda = report["device"].startswith("cuda")
    sparse = any(r.get("sparse", "none") != "none" or r["reuse"] < 1 for r in report["results"])
    columns = ("configuration", "J&F", "J", "F", "FPS", "model FPS", "median ms", "p90 ms", "GFLOPs", "slots", "bank MB")
    extra = (("frames reused", "area computed", "reused", "skipped") if sparse else ()) + (("CUDA peak MB",) if cuda else ())
    table = _new_table(title, columns + extra)
    for r in report["results"]:
        gflops = "-" if r["gflops"] is None else f"{r['gflops']:.1f}"
        table.add_row(
            r["config"], f"{r['J&F']:.3f}", f"{r['J']:.3f}", f"{r['F']:.3f}", f"{r['fps']:.2f}", f"{r['model_fps']:.2f}",
            f"{r['latency_ms_median']:.0f}", f"{r['latency_ms_p90']:.0f}", gflops, str(r["max_slots"]),
            f"{r['max_memory_mb']:.1f}", *(_shares(r) if sparse else ()),
            *((f"{r['peak_cuda_mb']:.0f}",) if cuda else ()),
        )
    stderr.print(table)
    m = report["machine"]
    stderr.print(
        f"{report['device']}: {m['processor']}, {m['threads']} threads, torch {m['torch']}, "
        f"peak RSS {report['peak_rss_mb']} MB; GFLOPs counted on every {FLOP_EVERY}th frame, which is left out of the timings"
    )

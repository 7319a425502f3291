"""Figures for bench reports: accuracy against speed, memory against frame index.

Matplotlib runs on its file-only Agg backend, so plotting needs no display.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

_MB = 2**20


def plot_results(report: dict, path: Path) -> None:
    """Left: J&F against FPS per configuration. Right: bank size against frame index on
    the longest sequence."""
    results = report["results"]
    figure, (accuracy, memory) = _two_panels()
    _accuracy_against_speed(accuracy, results, "J&F", report["dataset"])
    longest = max(report["sequences"], key=lambda name: len(results[0]["sequences"][name]["memory_bytes"]))
    banks = {r["config"]: r["sequences"][longest]["memory_bytes"] for r in results}
    _memory_against_frame(memory, {name: (range(len(b)), b) for name, b in banks.items()}, f"memory on {longest}")
    _save(figure, path)


def plot_long(report: dict, path: Path) -> None:
    """Bank size and per-frame latency against frame index for each configuration."""
    figure, (memory, latency) = _two_panels()
    series = {r["config"]: r["series"] for r in report["results"]}
    for name, one in series.items():
        latency.plot(one["frame"], one["latency_ms"], label=name)
    banks = {name: (one["frame"], one["memory_bytes"]) for name, one in series.items()}
    # log scale: flat policies sit far below a growing one
    _memory_against_frame(memory, banks, f"{report['long']}-frame synthetic clip: memory", log=True)
    _style(latency, "frame", "latency per frame (ms, median of each bin)", "latency")
    _save(figure, path)


def plot_prediction(report: dict, path: Path) -> None:
    """Per-horizon MSE and SSIM of every configuration (frame 1 .. 10 after the context)."""
    figure, (mse, similarity) = _two_panels()
    for result in report["results"]:
        curves = result["per_horizon"]
        horizons = range(1, len(curves["mse"]) + 1)
        style = "--" if result["config"] == "copy-last" else "-"
        mse.plot(horizons, curves["mse"], style, marker="o", markersize=3, label=result["config"])
        similarity.plot(horizons, curves["ssim"], style, marker="o", markersize=3, label=result["config"])
    title = f"{report['dataset']}, {report['sequences']} sequences"
    _style(mse, "frames ahead", "MSE per frame", f"{title}: MSE")
    _style(similarity, "frames ahead", "SSIM", "SSIM")
    mse.legend(fontsize=7)
    _save(figure, path)


def plot_semseg(report: dict, path: Path) -> None:
    """mIoU against FPS per configuration; per-class IoU of each configuration."""
    results = report["results"]
    figure, (accuracy, classes) = _two_panels(width=13)
    _accuracy_against_speed(accuracy, results, "miou", report["dataset"], name="mIoU")
    names = list(results[0]["class_iou"])
    width = 0.8 / len(results)
    for i, result in enumerate(results):
        values = [100 * (result["class_iou"][n] or 0) for n in names]
        classes.bar([x + i * width for x in range(len(names))], values, width, label=result["config"])
    classes.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, rotation=45, fontsize=8)
    _style(classes, "class", "IoU", "per class")
    classes.legend(fontsize=7)
    _save(figure, path)


def _two_panels(width: float = 12):
    return plt.subplots(1, 2, figsize=(width, 4.8), layout="constrained")


def _accuracy_against_speed(axes, results: list[dict], key: str, dataset: str, name: str | None = None) -> None:
    """One labelled point per configuration: ``key`` (a share, drawn in %) against FPS."""
    for result in results:
        point = (result["fps"], 100 * result[key])
        axes.scatter(*point, s=30)
        axes.annotate(result["config"], point, fontsize=7, xytext=(4, 3), textcoords="offset points")
    _style(axes, "frames per second (end to end)", name or key, f"{dataset}: accuracy against speed")


def _memory_against_frame(axes, banks: dict[str, tuple], title: str, log: bool = False) -> None:
    """One curve per configuration: (frame indices, bank bytes) drawn in MB."""
    for name, (frames, sizes) in banks.items():
        axes.plot(frames, [b / _MB for b in sizes], label=name)
    _style(axes, "frame", "memory bank (MB, log scale)" if log else "memory bank (MB)", title)
    if log:
        axes.set_yscale("log")
    axes.legend(fontsize=7)


def _style(axes, xlabel: str, ylabel: str, title: str) -> None:
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)


def _save(figure, path: Path) -> None:
    try:
        figure.savefig(path, dpi=110, format="png")
    finally:
        plt.close(figure)

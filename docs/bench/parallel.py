"""How vidseg behaves when a shell pipeline runs several at once (issue 38).

For one task, on a short clip, measures in one go:
- one run alone (wall time and the FPS it reports);
- N runs one after the other, and the same N at once (`xargs -P N`, `&` and `wait`);
- one run beside a CPU-bound busy loop at the same priority;
- with ``--alone K``: K runs alone with the default settings, each beside one with every
  core fixed (``VIDSEG_NUM_THREADS``, the policy before issue 38), in turn: the medians'
  ratio says what adapting costs a run alone.

Every run is a fresh `vidseg` process with default settings, as a script would start it;
``--env NAME=VALUE`` adds a variable to every run (to compare wait policies). Prints a
Markdown table on stdout; ``--json FILE`` keeps the numbers.

    python docs/bench/parallel.py segment --runs 2 --runs 4
    python docs/bench/parallel.py semseg
    python docs/bench/parallel.py predict
    /path/to/another/venv/bin/python docs/bench/parallel.py segment   # another install of vidseg
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
BUSY = "while True: pass"


def clip(task: str, folder: Path, frames: int) -> list[str]:
    """The command line of one run, on inputs made in ``folder``."""
    if task == "predict":
        video = folder / "mmnist.mp4"
        subprocess.run([sys.executable, "-m", "vidseg_cli.predict.data", str(video), "--index", "7", "--frames", str(frames)],
                       check=True, capture_output=True, cwd=folder)
        return ["predict", str(video), "--stream"]  # rolls through every frame
    source = SHARED / "davis16" / "val-dev"
    images = folder / "frames"
    images.mkdir()
    for index in range(frames):
        shutil.copy(source / "JPEGImages" / "breakdance" / f"{index:05d}.jpg", images / f"{index:05d}.jpg")
    if task == "semseg":
        return ["semseg", str(images)]
    return ["segment", str(images), "--mask", str(source / "Annotations" / "breakdance" / "00000.png")]


def start(command: list[str], out: Path | None, env: dict[str, str]) -> subprocess.Popen:
    argv = [sys.executable, "-m", "vidseg_cli", *command]
    if out is not None:
        argv += ["--out", str(out), "--json"]
    # cwd: not the checkout, where `python -m vidseg_cli` would import its vidseg_cli whatever
    # the interpreter has installed
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tempfile.gettempdir())


def finish(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"a run failed ({process.returncode}): {stderr.strip()[-400:]}")
    if not stdout.strip().startswith("{") or "\n{" in stdout.strip():  # --stream: JSON lines, no summary
        return {}
    return json.loads(stdout)


def run_at_once(command: list[str], count: int, folder: Path, env: dict[str, str]) -> tuple[float, list[dict]]:
    began = time.perf_counter()
    processes = [start(command, _out(command, folder), env) for _ in range(count)]
    results = [finish(process) for process in processes]
    return time.perf_counter() - began, results


def _out(command: list[str], folder: Path) -> Path | None:
    return None if "--stream" in command else Path(tempfile.mkdtemp(dir=folder)) / "out"


def _speed(command: list[str], folder: Path, env: dict[str, str]) -> float:
    """A run's own FPS (its --json), or for --stream 1 / wall seconds."""
    wall, results = run_at_once(command, 1, folder, env)
    return results[0]["fps"] if results[0] else 1 / wall


def _unit(command: list[str]) -> str:
    return "runs / s" if "--stream" in command else "fps"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["segment", "semseg", "predict"])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--runs", type=int, action="append", help="N concurrent runs (repeatable; default 2)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--alone", type=int, default=0, metavar="K")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    env = dict(os.environ, **dict(pair.split("=", 1) for pair in args.env))
    rows: dict[str, float] = {}
    spread: dict[str, list[float]] = {}  # each run of the --alone comparison
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        command = clip(args.task, folder, args.frames)
        run_at_once(command, 1, folder, env)  # warm-up: ONNX graphs, page cache
        alone, results = run_at_once(command, 1, folder, env)
        rows["alone: wall s"] = alone
        if results[0]:
            rows["alone: fps"] = results[0]["fps"]
        for count in args.runs or [2]:
            sequential = sum(run_at_once(command, 1, folder, env)[0] for _ in range(count))
            together, _ = run_at_once(command, count, folder, env)
            rows[f"{count} one after the other: wall s"] = sequential
            rows[f"{count} at once: wall s"] = together
            rows[f"{count} at once: speed-up over one after the other"] = sequential / together
        busy = subprocess.Popen([sys.executable, "-c", BUSY])
        try:
            time.sleep(1)
            beside, results = run_at_once(command, 1, folder, env)
        finally:
            busy.kill()
        rows["beside a busy loop: wall s"] = beside
        if results[0]:
            rows["beside a busy loop: fps"] = results[0]["fps"]
        rows["beside a busy loop: share of alone (wall)"] = alone / beside
        if args.alone:
            fixed = dict(env, VIDSEG_NUM_THREADS=str(len(os.sched_getaffinity(0))))
            adaptive, every = [], []
            for turn in range(args.alone):  # ABBA: neither goes first every time
                pair = [(adaptive, env), (every, fixed)]
                for speeds, variables in pair if turn % 2 == 0 else pair[::-1]:
                    speeds.append(_speed(command, folder, variables))
            rows[f"alone, median of {args.alone}: default (adaptive) {_unit(command)}"] = statistics.median(adaptive)
            rows[f"alone, median of {args.alone}: every core fixed {_unit(command)}"] = statistics.median(every)
            rows["alone: default / every core fixed"] = statistics.median(adaptive) / statistics.median(every)
            # the machine's slow spells fall on both runs of a pair: the pairs' ratios are steadier
            rows["alone: median of the pairs' ratios"] = statistics.median(a / b for a, b in zip(adaptive, every, strict=True))
            spread["alone: default (adaptive)"], spread["alone: every core fixed"] = adaptive, every
    print(f"| {args.task} ({args.frames} frames{', ' + ' '.join(args.env) if args.env else ''}) | value |")
    print("|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"task": args.task, "env": args.env, "frames": args.frames, **rows, "runs": spread}, indent=2) + "\n")


if __name__ == "__main__":
    main()

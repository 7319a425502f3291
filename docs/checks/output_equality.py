"""Are two installs of vidseg the same tool? Run the same jobs with each and compare.

    python docs/checks/output_equality.py run  --vidseg /old/venv/bin/vidseg --out /tmp/before
    python docs/checks/output_equality.py run  --vidseg vidseg               --out /tmp/after
    python docs/checks/output_equality.py compare /tmp/before /tmp/after

Run both with this checkout's script: each output's marker records its inputs' paths and
times, so both runs must read the same shared data and the same generated clip.
``run`` writes every output of segment, semseg, predict and bench on the shared data, then
``manifest.json``: the sha256 of each output file, and each bench report with its timings
(FPS, latency, memory: they differ from run to run) removed. ``compare`` lists what differs and
exits 1 if anything does, but for the lossy overlay preview (H.264, whose bytes vary between
two runs of one install), which it lists apart. Used for the refactor of issue 36; any change that claims to keep
behaviour can run it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
# Inputs made here stay at one path between runs: each output's marker records its inputs'
# paths, sizes and times, and should match too (a re-run after an upgrade must see that).
INPUTS = Path(tempfile.gettempdir()) / "vidseg-equality-inputs"
# Every job writes here, then its output moves under --out: the marker records the output
# path too, so both runs write to the same one.
WORK = Path(tempfile.gettempdir()) / "vidseg-equality-work"
# The colour overlay is a lossy H.264 preview whose bytes vary between two runs of one
# install (measured: two runs of the same commit gave two files): listed, never failed on.
LOSSY = (".mp4",)
TIMING = ("fps", "latency", "ms", "rss", "memory_mb", "seconds", "time", "wall", "peak", "threads", "cpu")


def jobs(out: Path, digits: Path) -> dict[str, list[str]]:
    """Each job's arguments; outputs go under ``out``."""
    examples = DATA / "examples"
    return {
        "segment": ["segment", str(examples / "images/judo"), "--mask", str(examples / "masks/judo"),
                    "--resize-mask", "--out", str(out / "segment"), "--format", "all"],
        "semseg": ["semseg", str(DATA / "camvid/val"), "--out", str(out / "semseg")],
        "predict": ["predict", str(digits), "--context", "10", "--frames", "10", "--out", str(out / "predict")],
        "bench-vos": ["bench", "--data", str(DATA / "davis16/val-dev"), "--sequences", "blackswan",
                      "--memory", "stremn,first-last", "--json"],
        "bench-semseg": ["bench", "--task", "semseg", "--data", str(DATA / "camvid"), "--split", "val", "--json"],
        "bench-predict": ["bench", "--task", "predict", "--limit", "50", "--timed", "2", "--json"],
    }


def moving_digits(folder: Path) -> Path:
    """A 20-frame 64x64 clip of two digits bouncing, the same for every install (fixed seed);
    written once, so that later runs read the very same files."""
    if folder.is_dir() and len(list(folder.glob("*.png"))) == 20:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = np.load(Path(__file__).resolve().parents[2] / "vidseg_cli/predict/example_digits.npz")
    digits = images["digits"][:2]
    position = rng.uniform(0, 36, (2, 2))
    velocity = rng.uniform(-3, 3, (2, 2))
    for t in range(20):
        frame = np.zeros((64, 64), np.uint8)
        for digit, (y, x) in zip(digits, position.astype(int)):
            frame[y : y + 28, x : x + 28] = np.maximum(frame[y : y + 28, x : x + 28], digit)
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
        position += velocity
        bounce = (position < 0) | (position > 36)
        velocity[bounce] *= -1
        position = position.clip(0, 36)
    return folder


def fingerprint(path: Path) -> str:
    """sha256 of a file; of a label video's decoded frames and timestamps (Matroska writes a
    random segment id into every file's header)."""
    if path.suffix != ".mkv":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    import av

    digest = hashlib.sha256()
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            digest.update(str(frame.pts).encode())
            digest.update(frame.to_ndarray().tobytes())
    return "frames " + digest.hexdigest()


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not any(word in k.lower() for word in TIMING)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def run(vidseg: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=False)
    shutil.rmtree(WORK, ignore_errors=True)
    digits = moving_digits(INPUTS / "digits")
    manifest: dict[str, object] = {}
    for name, args in jobs(WORK, digits).items():
        print(f"{name}: {vidseg} {' '.join(args)}", file=sys.stderr)
        done = subprocess.run([vidseg, *args], capture_output=True, text=True, cwd=out)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed ({done.returncode}): {done.stderr[-2000:]}")
        if args[0] == "bench":
            manifest[name] = without_timings(json.loads(done.stdout))
        else:
            folder = Path(shutil.move(WORK / name, out / name))
            manifest[name] = {str(p.relative_to(folder)): fingerprint(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


def compare(before: Path, after: Path) -> int:
    old = json.loads((before / "manifest.json").read_text())
    new = json.loads((after / "manifest.json").read_text())
    differences = 0
    for job in sorted(set(old) | set(new)):
        a, b = old.get(job), new.get(job)
        if a == b:
            print(f"{job}: identical ({len(a) if isinstance(a, dict) else 'report'} entries)")
        elif isinstance(a, dict) and isinstance(b, dict):
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            exact = [k for k in changed if not k.endswith(LOSSY)]
            differences += bool(exact)
            same = len(set(a) | set(b)) - len(changed)
            print(f"{job}: {same} entries identical; differ: {exact or 'none'}"
                  + (f"; lossy previews that differ: {sorted(set(changed) - set(exact))}" if len(exact) < len(changed) else ""))
        else:
            differences += 1
            print(f"{job}: DIFFERS")
    return 1 if differences else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runner = sub.add_parser("run")
    runner.add_argument("--vidseg", default="vidseg")
    runner.add_argument("--out", type=Path, required=True)
    comparer = sub.add_parser("compare")
    comparer.add_argument("before", type=Path)
    comparer.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.vidseg, args.out)
    else:
        sys.exit(compare(args.before, args.after))


if __name__ == "__main__":
    main()

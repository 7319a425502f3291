"""What every `vidseg train` command does with its run folder: make it safe to write, record
or check the settings, log to it, and save a checkpoint when stopped (Ctrl-C, SIGTERM)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
import typer

from vidseg_cli.cli import flags
from vidseg_cli.cli.common import stderr
from vidseg_cli.engine.job import pick_device
from vidseg_cli.engine.threads import use_all_cores
from vidseg_cli.errors import VidsegError
from vidseg_cli.io.outputs import MARKER, resolve_output
from vidseg_cli.signals import Terminated, interrupted_code
from vidseg_cli.train.loop import CHECKPOINT


def crop_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise VidsegError(f"--crop takes HEIGHTxWIDTH, e.g. 256x384, not {text!r}") from None
    if height % 16 or width % 16 or min(height, width) < 32:
        raise VidsegError("--crop sides must be multiples of 16, at least 32")
    return height, width


def pair_text(pair: tuple) -> str:
    return ",".join(f"{v:g}" for v in pair)


def pair(option: str, text: str, kind: type) -> tuple:
    try:
        first, last = (kind(part) for part in text.split(","))
    except ValueError:
        raise VidsegError(f"{option} takes START,END, e.g. {option} 3,10, not {text!r}") from None
    return first, last


def open_run(out: Path, run: flags.RunFlags, inputs: list[Path | str | None]) -> torch.device:
    """The run folder made ready (``prepare``), every core put to work, and the device to train on."""
    prepare(out, run, inputs)
    use_all_cores()
    return pick_device(run.device.value)


def train_in(
    out: Path, trainer, config, run: flags.RunFlags, intro: Callable[[int], str], work: Callable,
    on_stop: Callable[[], Path] | None = None,
) -> None:
    """Start or resume ``trainer`` in ``out``, log ``intro(step)``, train with ``work(log)``,
    and print what it wrote on stdout."""
    start_or_resume(trainer, out, config, run.resume)
    with training_log(out, trainer, on_stop) as log:
        log(intro(trainer.step))
        path = work(log)
    print(path)
def prepare(out: Path, run: flags.RunFlags, inputs: list[Path | str | None]) -> None:
    """A run folder that is no input and holds no input; --force empties only a folder
    that a vidseg training run made (marked, or holding its config.json and train.log)."""
    resolve_output(out, [Path(p) for p in inputs if p is not None and Path(p).exists()])
    if run.resume:
        if not (out / CHECKPOINT).is_file():
            raise VidsegError(f"nothing to resume: {out / CHECKPOINT} does not exist")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not is_run_folder(out):
            raise VidsegError(f"{out} exists and is not a vidseg run folder; choose another --out")
        if not run.force:
            raise VidsegError(f"run folder {out} is not empty; pass --resume to continue or --force to start over")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("a vidseg training run folder; `--force` may replace it\n")


def is_run_folder(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and (
        (folder / MARKER).is_file() or ((folder / "config.json").is_file() and (folder / "train.log").is_file())
    )


def check_same(out: Path, config) -> None:
    saved = json.loads((out / "config.json").read_text())
    now = json.loads(json.dumps(asdict(config)))
    try:
        defaults = json.loads(json.dumps(asdict(type(config)())))
    except TypeError:  # a config without defaults for every field
        defaults = {}
    different = sorted(key for key in now if not same_setting(saved, now, defaults, key))
    if different:
        raise VidsegError(f"--resume with different settings than the run was started with: {', '.join(different)}")


def same_setting(saved: dict, now: dict, defaults: dict, key: str) -> bool:
    """A setting added to vidseg after a run started is absent from its config.json: the
    run had it at its default value."""
    if key not in saved:
        return key in defaults and now[key] == defaults[key]
    if isinstance(now[key], dict) and isinstance(saved[key], dict):
        inner = defaults.get(key) if isinstance(defaults.get(key), dict) else {}
        return all(same_setting(saved[key], now[key], inner, k) for k in now[key]) and set(saved[key]) <= set(now[key])
    return saved[key] == now[key]



def start_or_resume(trainer, out: Path, config, resume: bool) -> None:
    """Resume from OUT's checkpoint (with the settings it was started with), or record them."""
    if resume:
        trainer.load_checkpoint()
        check_same(out, config)
    else:
        (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")


@contextmanager
def training_log(out: Path, trainer, on_stop: Callable[[], Path] | None = None) -> Iterator[Callable[[str], None]]:
    """A log to stderr and OUT/train.log; Ctrl-C or SIGTERM inside saves a checkpoint and
    exits 130 or 143 (a scheduler's SIGTERM loses nothing either). ``on_stop`` also writes
    the model as it stands, for trainers whose every step gives a usable one."""
    with open(out / "train.log", "a") as log_file:
        log = logger(log_file)
        try:
            yield log
        except KeyboardInterrupt as error:
            trainer.save_checkpoint()
            word = "terminated" if isinstance(error, Terminated) else "interrupted"
            written = f", model at this step written to {on_stop()}" if on_stop is not None else ""
            log(f"{word} at step {trainer.step}; checkpoint saved{written}, continue with --resume")
            raise typer.Exit(interrupted_code(error)) from None


def logger(log_file):
    def log(line: str) -> None:
        stderr.print(line, highlight=False)
        log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        log_file.flush()

    return log
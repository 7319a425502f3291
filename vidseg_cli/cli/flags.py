"""Flags that several subcommands take, each defined once with its meaning and help; every
command gives its own default. The CLI modules use them as ``flags.DeviceOption`` and so on."""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.markup import escape

from vidseg_cli.options import NO_MEMORY, POLICIES, RUNTIMES, UPDATE_RULES


def install_hint(extra: str) -> str:
    """``pip install "vidseg[EXTRA]"`` for a help text. Typer renders help as Rich markup,
    where ``[onnx]`` is a style tag and vanishes: the bracket is escaped."""
    return f'pip install "vidseg{escape(f"[{extra}]")}"'


def choices(name: str, values: tuple[str, ...]) -> type[enum.Enum]:
    """An option's choices as the str Enum Typer lists in help and completion."""
    return enum.Enum(name, {value: value for value in values}, type=str)


Update = choices("Update", UPDATE_RULES)  # stremn's rules, every command
Runtime = choices("Runtime", RUNTIMES)  # what runs the backbone
MemoryOrNone = choices("MemoryOrNone", (*POLICIES, NO_MEMORY))  # semseg and predict: a policy, or no memory


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


# Options that several subcommands take, each defined once (defaults stay with each command).
DeviceOption = Annotated[Device, typer.Option(help="Where to run.")]
UpdateOption = Annotated[Update, typer.Option(help="stremn rule: A oldest, B newest, C least-similar pair, D most-similar pair.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="An output this command already published from the same input and options is left as it is (one line, exit 0): a re-run pipeline skips finished work.")]
ThreadsOption = Annotated[Optional[int], typer.Option(metavar="N", min=1, max=1024, help="Threads to run on (default: the cores other processes leave free, looked at twice a second; VIDSEG_NUM_THREADS sets it too).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]

# Options every trainer takes, with the same meaning (each command gives its own default).
Seed = Annotated[int, typer.Option(help="Seeds every random draw.")]
CheckpointEvery = Annotated[int, typer.Option(min=1, help="Write checkpoint.pt every N steps.")]
TrainDevice = Annotated[Device, typer.Option(help="Where to train.")]
TrainResume = Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")]
StartOver = Annotated[bool, typer.Option("--force", help="Start over in an existing run folder.")]
DavisData = Annotated[Path, typer.Option(help="Training data in DAVIS layout.")]
Crop = Annotated[str, typer.Option(help="Training crop HEIGHTxWIDTH.")]
ClipSteps = Annotated[int, typer.Option(min=1, help="Training clips (one optimiser step each).")]
AdamLR = Annotated[float, typer.Option(help="Peak AdamW learning rate.")]
MaxGap = Annotated[int, typer.Option(min=1, help="Widest gap between clip frames.")]


@dataclasses.dataclass(frozen=True)
class JobFlags:
    """What a job that publishes one output folder takes (semseg, predict), after its own flags."""

    force: ForceOption = False
    resume: ResumeOption = False
    device: DeviceOption = Device.auto
    threads: ThreadsOption = None
    json: JsonOption = False

    def job_options(self) -> dict[str, Any]:
        """The fields every job's options dataclass has (options.OutputJob)."""
        return {"force": self.force, "resume": self.resume, "device": self.device.value}


@dataclasses.dataclass(frozen=True)
class RunFlags:
    """What every trainer takes about its run folder, after its own flags."""

    checkpoint_every: CheckpointEvery = 250
    device: TrainDevice = Device.auto
    resume: TrainResume = False
    force: StartOver = False


F = TypeVar("F", bound=Callable[..., Any])


def taking(bundle: type, **defaults: Any) -> Callable[[F], F]:
    """A command whose last parameter is a ``bundle`` of flags (JobFlags, RunFlags) takes
    them one by one on the command line, after its own, and gets them as one ``bundle``.
    Typer reads a command's flags from its signature: this one lists the bundle's fields in
    the last parameter's place, with ``defaults`` overriding the bundle's."""
    hints = typing.get_type_hints(bundle, include_extras=True)
    fields = dataclasses.fields(bundle)

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        *own, last = signature.parameters.values()
        if last.annotation is not bundle:
            raise TypeError(f"{command.__name__}'s last parameter must be a {bundle.__name__}")
        flat = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(f.name, f.default), annotation=hints[f.name])
            for f in fields
        ]

        @functools.wraps(command)
        def with_bundle(**values: Any) -> Any:
            given = bundle(**{f.name: values.pop(f.name) for f in fields})
            return command(**values, **{last.name: given})

        with_bundle.__signature__ = signature.replace(parameters=[*own, *flat])
        return with_bundle  # type: ignore[return-value]

    return decorate

"""Batch manifests: one video a row, CSV or JSON lines, read without importing torch.

Columns: ``input`` and ``mask`` (the forms of ``--mask``, several separated by ``;``) are
required, ``out`` is optional (default beside the input, as segment's), ``task`` is
``segment`` (semseg and predict run one video per command for now), and any of segment's options by name (``model``,
``memory``, ``slots``, ``size``, ``format``, ...; ``-`` or ``_``) overrides the command
line's value for that row. Relative paths are relative to the manifest's folder, so a
manifest and its videos move together. A value that cannot be read is refused with its
line and column before any row runs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidseg_cli.errors import VidsegError
from vidseg_cli.options import (
    DIRECTIONS,
    POLICIES,
    TTAS,
    UPDATE_RULES,
    EventOptions,
    SegmentOptions,
)

TASKS = ("segment",)
ONE_VIDEO_TASKS = ("semseg", "predict")  # commands of their own, not in batch manifests yet
FORMATS = ("png", "video", "overlay", "alpha", "rle", "all")


def _whole(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError("must be in [0, 1)")
    return value


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "y"):
        return True
    if lowered in ("0", "false", "no", "n", ""):
        return False
    raise ValueError("is not true or false")


def _file(text: str) -> str:
    if text == "-":
        raise ValueError("cannot be stdout in a batch (stdout carries the row results): give a file")
    return text


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"choose from {', '.join(choices)}")
        return text

    return parse


# column -> how its text is read; the names are segment's options
COLUMNS: dict[str, Callable[[str], Any]] = {
    "input": str,
    "mask": str,
    "out": str,
    "task": _choice(TASKS + ONE_VIDEO_TASKS),
    "model": str,
    "memory": _choice(POLICIES),
    "slots": _whole,
    "update": _choice(UPDATE_RULES),
    "every": _whole,
    "write_every": _whole,
    "size": _whole,
    "format": _choice(FORMATS),
    "direction": _choice(DIRECTIONS),
    "tta": _choice(TTAS),
    "resize_mask": _flag,
    "events": _file,
    "lost_after": _whole,
    "lost_below": _share,
}


@dataclass(frozen=True)
class Row:
    number: int  # 1-based among the manifest's rows
    line: int  # where it is in the file
    values: dict[str, Any]  # parsed, only the columns this row fills

    @property
    def input(self) -> str:
        return self.values["input"]


def read_manifest(path: Path) -> list[Row]:
    """Every row, parsed and checked; VidsegError (exit 2) names the line and column."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise VidsegError(f"manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise VidsegError(f"cannot read manifest {path}: {getattr(error, 'strerror', None) or error}") from None
    records = _json_lines(path, text) if _is_json_lines(path, text) else _csv(path, text)
    rows = [Row(number, line, _parse(path, line, raw)) for number, (line, raw) in enumerate(records, start=1)]
    if not rows:
        raise VidsegError(f"manifest {path} has no rows")
    _check_outputs_differ(path, rows)
    return rows


def _is_json_lines(path: Path, text: str) -> bool:
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return True
    if path.suffix.lower() == ".csv":
        return False
    return text.lstrip().startswith("{")


def _csv(path: Path, text: str) -> list[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(text.splitlines())
    try:
        records = []
        for raw in reader:
            if None in raw:
                raise VidsegError(f"{path} line {reader.line_num}: more values than the header has columns")
            if any((value or "").strip() for value in raw.values()):
                records.append((reader.line_num, {k: (v or "").strip() for k, v in raw.items()}))
    except csv.Error as error:
        raise VidsegError(f"{path} line {reader.line_num}: {error}") from None
    return records


def _json_lines(path: Path, text: str) -> list[tuple[int, dict[str, str]]]:
    records = []
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            raw = json.loads(content)
        except json.JSONDecodeError as error:
            raise VidsegError(f"{path} line {line}: not JSON ({error.msg})") from None
        if not isinstance(raw, dict):
            raise VidsegError(f"{path} line {line}: a row is a JSON object, {{\"input\": ..., \"mask\": ...}}")
        records.append((line, {str(k): _text(v) for k, v in raw.items()}))
    return records


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _parse(path: Path, line: int, raw: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for column, text in raw.items():
        name = column.strip().lower().replace("-", "_")
        if name not in COLUMNS:
            raise VidsegError(f"{path} line {line}: unknown column {column!r}; columns are {', '.join(COLUMNS)}")
        if text == "":
            continue
        try:
            values[name] = COLUMNS[name](text)
        except ValueError as error:
            raise VidsegError(f"{path} line {line}, column {name}: {text!r} {error}") from None
    for required in ("input", "mask"):
        if required not in values:
            raise VidsegError(f"{path} line {line}: column {required} is empty")
    if values.get("task") in ONE_VIDEO_TASKS:
        raise VidsegError(
            f"{path} line {line}, column task: batch runs {', '.join(TASKS)} rows; "
            f"run `vidseg {values['task']}` on each video for now"
        )
    base = path.resolve().parent
    for name in ("input", "out", "events"):
        if name in values and values[name] != "-":
            values[name] = str(base / values[name])
    values["mask"] = ";".join(_mask_spec(base, spec.strip()) for spec in values["mask"].split(";") if spec.strip())
    return values


def _mask_spec(base: Path, spec: str) -> str:
    """``N:PNG`` keeps its frame index; the path is taken relative to the manifest."""
    index, sep, rest = spec.partition(":")
    if sep and index.isdigit() and not (base / spec).exists():
        return f"{index}:{base / rest}"
    return str(base / spec)


def _check_outputs_differ(path: Path, rows: list[Row]) -> None:
    seen: dict[str, Row] = {}
    for row in rows:
        out = row.values.get("out")
        if out is None:
            continue
        key = str(Path(out).resolve())
        if key in seen:
            raise VidsegError(f"{path} line {row.line}, column out: {out} is also the output of line {seen[key].line}")
        seen[key] = row


def shard(rows: list[Row], spec: str | None) -> list[Row]:
    """``I/N``: every N-th row from the I-th (1-based): machines that share a filesystem
    split a manifest without talking to each other."""
    if spec is None:
        return rows
    index, sep, count = spec.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 1 <= int(index) <= int(count):
        raise VidsegError(f"--shard {spec}: give I/N with 1 <= I <= N, e.g. 2/4")
    return [row for row in rows if (row.number - 1) % int(count) == int(index) - 1]


def row_options(row: Row, defaults: SegmentOptions) -> SegmentOptions:
    """The command line's options with this row's values over them."""
    v = row.values
    memory = dataclasses.replace(
        defaults.memory, **{k: v[k] for k in ("memory", "slots", "update", "every", "write_every") if k in v}
    )
    events = EventOptions(
        after=v.get("lost_after", defaults.event_options.after),
        min_share=v.get("lost_below", defaults.event_options.min_share),
    )
    return dataclasses.replace(
        defaults,
        input=Path(v["input"]),
        masks=[spec for spec in v["mask"].split(";") if spec],
        out=Path(v["out"]) if "out" in v else None,
        memory=memory,
        event_options=events,
        **{k: v[k] for k in ("model", "size", "format", "direction", "tta", "resize_mask", "events") if k in v},
    )

"""`vidseg batch`: many videos from a manifest, on this machine or a Ray cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from vidseg_cli.cli import flags
from vidseg_cli.cli.common import stderr, user_errors
from vidseg_cli.cli.segment import Direction, Format, Memory, Tta
from vidseg_cli.options import (
    DEFAULT_SIZE,
    DEFAULT_VOS_MODEL,
    EventOptions,
    MemoryOptions,
    SegmentOptions,
)


@user_errors
def batch_command(
    manifest: Annotated[Path, typer.Argument(help="CSV or JSON lines: input, mask (';' between several), out, and any of segment's options per row.")],
    jobs: Annotated[int, typer.Option(min=1, max=64, help="Worker processes on this machine (the cores are divided between them).")] = 1,
    shard: Annotated[Optional[str], typer.Option(metavar="I/N", help="Run every N-th row from the I-th: N machines split a manifest without coordination.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip rows whose output is complete (a killed batch restarts where it stopped).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing vidseg outputs.")] = False,
    ray: Annotated[Optional[str], typer.Option(metavar="ADDRESS|local", help="Run the rows on a Ray cluster (ray.init(ADDRESS)); 'local' starts one here. Needs the ray extra.")] = None,
    model: Annotated[str, typer.Option(help="Default VOS model for every row.")] = DEFAULT_VOS_MODEL,
    memory: Annotated[Memory, typer.Option(help="Default memory update policy.")] = Memory.stremn,
    slots: Annotated[int, typer.Option(help="Default memory slots.")] = 5,
    update: Annotated[flags.Update, typer.Option(help="Default stremn rule.")] = flags.Update.C,
    every: Annotated[int, typer.Option(help="Default stm interval.")] = 5,
    size: Annotated[int, typer.Option(help="Default processing size.")] = DEFAULT_SIZE,
    format: Annotated[Format, typer.Option("--format", "-f", help="Default output format.")] = Format.png,
    direction: Annotated[Direction, typer.Option(help="Default propagation direction.")] = Direction.both,
    tta: Annotated[Tta, typer.Option(help="Default test-time augmentation.")] = Tta.none,
    resize_mask: Annotated[bool, typer.Option("--resize-mask", help="Resize masks whose size differs from the frames.")] = False,
    device: Annotated[flags.Device, typer.Option(help="Where each worker runs.")] = flags.Device.auto,
) -> None:
    """Segment every video of a manifest: one JSON line per row on stdout as it finishes.

    Exit 0 when every row succeeded or was skipped, 1 when any failed, 2 for a manifest that
    cannot be read.
    """
    from vidseg_cli.batch.manifest import read_manifest
    from vidseg_cli.batch.manifest import shard as take_shard
    from vidseg_cli.batch.runner import jobs_for

    rows = take_shard(read_manifest(manifest), shard)
    defaults = SegmentOptions(
        input=Path("."), masks=[], force=force, resize_mask=resize_mask, model=model, size=size,
        device=device.value, format=format.value, direction=direction.value, tta=tta.value,
        memory=MemoryOptions(memory=memory.value, slots=slots, update=update.value, every=every),
        event_options=EventOptions(),
    )
    work = jobs_for(rows, defaults, resume)
    failed = 0
    for done, result in enumerate(_results(work, jobs, ray), start=1):
        print(json.dumps(result), flush=True)
        failed += result["status"] == "failed"
        detail = result["error"] if result["status"] == "failed" else f"{result['frames'] or 0} frames, {result['seconds']} s"
        stderr.print(f"[{done}/{len(work)}] {result['status']}: {result['input']} ({detail})", highlight=False, markup=False)
    if failed:
        stderr.print(f"{failed} of {len(work)} rows failed", highlight=False)
        raise typer.Exit(1)


def _results(work: list, jobs: int, ray: str | None):
    if not work:
        return iter(())
    if ray is not None:
        from vidseg_cli.batch.cluster import run_on_ray

        return run_on_ray(work, ray, actors=jobs if jobs > 1 else None)
    if jobs == 1:
        from vidseg_cli.batch.runner import run_here

        return run_here(work)
    from vidseg_cli.batch.runner import run_in_processes
    from vidseg_cli.cores import available_cores

    if jobs > len(work):
        jobs = len(work)
    return run_in_processes(work, jobs, available_cores())

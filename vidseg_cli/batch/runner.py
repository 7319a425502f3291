"""Running manifest rows: in this process, in worker processes, or on Ray actors.

Every row gets a fresh session (the segment job makes one per video); the model is built
once per process and kept (``models.registry`` caches it), so a worker pays torch's import
and the model load once, not once per video. A row that fails is reported and the others
go on; Ctrl-C or SIGTERM stops the batch (finished rows stay published, the running ones
leave nothing).
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from vidseg_cli.batch.manifest import Row, row_options
from vidseg_cli.errors import VidsegError
from vidseg_cli.options import SegmentOptions

OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass(frozen=True)
class Job:
    """A row and the options it runs with (picklable: it travels to workers and actors)."""

    row: Row
    options: SegmentOptions
    resume: bool

    @property
    def out(self) -> Path:
        from vidseg_cli.engine.job import default_output  # torch: in the worker

        return Path(os.path.abspath(self.options.out or default_output(self.options.input)))


def jobs_for(rows: list[Row], defaults: SegmentOptions, resume: bool) -> list[Job]:
    """With ``resume`` a complete row (published from the same input, masks and options) is
    skipped, a row cut short goes on from its checkpoint, and a row whose output another
    run made fails as without ``resume``: a stale output is never taken for this row's."""
    return [Job(row, dataclasses.replace(row_options(row, defaults), resume=resume), resume) for row in rows]


def run_job(job: Job) -> dict:
    """One row, start to end: its JSON result line, never an exception (but Ctrl-C)."""
    from vidseg_cli.io.outputs import AlreadyComplete
    from vidseg_cli.vos.segment import segment  # torch: loaded once per process

    result = {"row": job.row.number, "line": job.row.line, "input": str(job.options.input), "out": str(job.out)}
    start = time.perf_counter()
    try:
        summary = segment(job.options)
        status, error, frames, fps = OK, None, summary.frames, summary.fps
    except AlreadyComplete:  # --resume: published by this row's input and options before
        return {**result, "status": SKIPPED, "frames": None, "fps": None, "seconds": 0.0, "error": None}
    except VidsegError as failure:
        status, error, frames, fps = FAILED, " ".join(str(failure).split()), None, None
    except OSError as failure:
        status, error, frames, fps = FAILED, f"{failure.strerror or failure}", None, None
    except Exception as failure:  # noqa: BLE001 - one broken row must not stop the batch
        last = traceback.extract_tb(failure.__traceback__)[-1]
        status, frames, fps = FAILED, None, None
        error = f"internal error: {type(failure).__name__}: {failure} ({Path(last.filename).name}:{last.lineno})"
    seconds = round(time.perf_counter() - start, 3)
    return {**result, "status": status, "frames": frames, "fps": fps, "seconds": seconds, "error": error}


def run_here(jobs: list[Job]) -> Iterator[dict]:
    """Row after row in this process."""
    for job in jobs:
        yield run_job(job)


def _worker_start(threads: int) -> None:
    from vidseg_cli.cores import THREADS_VARIABLE
    from vidseg_cli.signals import install_signal_handlers

    os.environ[THREADS_VARIABLE] = str(threads)
    install_signal_handlers(importing=False)  # SIGTERM cleans up the row's staging folder


def run_in_processes(jobs: list[Job], workers: int, cores: int) -> Iterator[dict]:
    """``workers`` processes, each with an equal share of the cores, results as they finish."""
    threads = max(1, cores // workers)
    # spawn, not fork: a forked child of a process with live OpenMP threads can deadlock
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_start, initargs=(threads,)) as pool:
        pending: set[Future] = {pool.submit(run_job, job) for job in jobs}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()  # SIGTERM: each worker removes its staging folder
            raise

"""The cores a vidseg job may use now: every core it may run on, less those that other
processes keep busy. Standard library only: the entry point imports it first.

Why. PyTorch's OpenMP threads spin while they wait for each other at the end of every
parallel region. When another process holds one of the cores, every region waits for the
thread that lost it, which spins on the core the other process needs: two `vidseg segment`
runs started together on 2 cores took 2.7x as long as the same two one after the other,
and one run beside a busy loop kept a third of its speed (docs/bench/parallel.md). A
passive wait policy removes the spinning but costs a job that runs alone (a sleeping
thread wakes late for every small operation). A thread count that follows the cores left
free keeps both: beside another busy process a job runs one thread, which waits for no
one; alone it keeps every core and the spinning that makes it fast.

How. Every half second, from /proc/stat: the busy time of the cores this process may run
on, less this process's own CPU time, is what other processes used; the job takes the
cores they left, at least one. The first look covers the time since this module was
imported (the seconds torch takes to import), so two runs started together both start
with one thread. ``VIDSEG_NUM_THREADS`` (``--threads``) fixes the count instead. Linux
only: elsewhere, and where /proc/stat cannot be read, every core.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NamedTuple

THREADS_VARIABLE = "VIDSEG_NUM_THREADS"  # a fixed thread count: --threads, or a batch worker's share
INTERVAL = 0.5  # seconds between two looks at the cores
# other processes' load below this many cores is noise (a shell, a logger), not a contender
NOISE = 0.35


def available_cores() -> int:
    """The cores this process may run on (its affinity), at least 1."""
    return max(1, len(_cpus()) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def fixed_threads() -> int | None:
    """The thread count ``VIDSEG_NUM_THREADS`` sets, or None (adapt)."""
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _cpus() -> set[int]:
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


class Sample(NamedTuple):
    wall: float  # time.monotonic()
    busy: float  # CPU seconds the process's cores spent busy, since boot
    own: float  # CPU seconds this process used (every thread), since it started


def sample() -> Sample | None:
    """Now, or None where /proc/stat is not there (not Linux) or unreadable."""
    cpus = {f"cpu{index}" for index in _cpus()}
    try:
        with open("/proc/stat") as handle:
            lines = [line.split() for line in handle if line.startswith("cpu")]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    busy = 0
    for fields in lines:
        if fields[0] in cpus:
            values = [int(v) for v in fields[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            busy += sum(values[:8]) - idle  # user .. steal; guest time is inside user
    return Sample(time.monotonic(), busy / ticks, time.process_time())


def others_busy(before: Sample, after: Sample) -> float:
    """Cores other processes kept busy, on average, between two samples."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    return max(0.0, (after.busy - before.busy) - (after.own - before.own)) / wall


class CoreShare:
    """Decides a job's thread count from the cores other processes leave it."""

    def __init__(
        self, cores: int, start: Sample | None, read: Callable[[], Sample | None] = sample,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cores, self.read, self.clock = cores, read, clock
        self.last = start
        self.threads = cores
        self.used: set[int] = set()
        self.look(force=True)
        self.used.add(self.threads)  # also when no look could be taken (no /proc/stat)

    def look(self, force: bool = False) -> int | None:
        """The new thread count when it changed since the last look (at most one look per
        INTERVAL), else None."""
        if self.last is None or (not force and self.clock() - self.last.wall < INTERVAL):
            return None
        now = self.read()
        if now is None:
            return None
        busy, self.last = others_busy(self.last, now), now
        threads = max(1, min(self.cores, self.cores - int(max(0.0, busy - NOISE) + 0.999)))
        changed, self.threads = threads != self.threads, threads
        self.used.add(threads)
        return threads if changed else None


STARTED = sample()  # when vidseg_cli.cores was first imported: the process's start, near enough

"""A job's threads: every core it may have now (vidseg_cli/cores.py), set in PyTorch, and
how the process's memory and floats are tuned for a job."""

from __future__ import annotations

import ctypes
import sys

import torch

from vidseg_cli.cores import STARTED, CoreShare, available_cores, fixed_threads

_share: CoreShare | None = None  # the running job's, when its threads adapt


def use_all_cores(adaptive: bool = False) -> None:
    """Set PyTorch's threads for a job, and tune the process for it.

    Threads: ``VIDSEG_NUM_THREADS`` (``--threads``, or a batch worker's share) when set;
    else, with ``adaptive`` (the segment, semseg and predict jobs), the cores other
    processes leave free now, looked at again as the job goes (``adapt``); else every core
    this process may run on (PyTorch's default is the physical cores). Training and bench
    keep a fixed count: a bench compares configurations at equal threads.

    Large freed buffers are kept for reuse (``keep_freed_buffers``). Denormal floats are
    flushed to zero, for the whole process (a job is the process's one task; tests reset
    it): a softmax over thousands of memory positions leaves most weights below 1e-38, and
    x86 computes with those up to 100x slower (the semseg global read's value matmul took
    70 ms instead of 5 at 480x352)."""
    global _share
    fixed = fixed_threads()
    _share = CoreShare(available_cores(), STARTED) if adaptive and fixed is None else None
    torch.set_num_threads(fixed or (_share.threads if _share is not None else available_cores()))
    torch.set_flush_denormal(True)
    keep_freed_buffers()


def adapt() -> None:
    """Follow the cores left free (at most one look per half second; a no-op unless the
    job adapts). Call it from the thread that runs the job, once a frame: PyTorch's thread
    count belongs to the thread that sets it."""
    if _share is not None:
        changed = _share.look()
        if changed is not None:
            torch.set_num_threads(changed)


def threads_used() -> dict:
    """For a job's --json: the thread counts it ran with, and whether they adapted."""
    if _share is None:
        return {"adaptive": False, "threads": torch.get_num_threads()}
    return {"adaptive": True, "cores": _share.cores, "min": min(_share.used), "max": max(_share.used)}


def keep_freed_buffers() -> None:
    """Stop glibc from returning large blocks to the kernel on every free.

    Above its mmap threshold (128 KiB, adapting up to 32 MiB) glibc maps each allocation
    afresh and unmaps it on free, so large activation maps are page-faulted in again frame
    after frame; in a VM a fault can cost more than the convolution that fills the page.
    PyTorch's CPU allocator has no cache of its own, so the heap is the cache. Measured here:
    a 25-frame loop of encode + segment at 360p, 90-115 ms per frame against 73-77 ms; over
    DAVIS val-dev, where glibc's own threshold adapts after a while, 10.02 against 10.55 FPS
    and a p90 latency of 115 against 98 ms (README)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return  # not glibc (musl): nothing to tune
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed threshold
    mallopt(m_trim_threshold, 1 << 30)

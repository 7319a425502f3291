"""Rows on a Ray cluster: actors that load the model once and take rows.

``ray.init(address)`` joins a running cluster (``auto``, ``ray://head:10001``, ...);
``local`` starts a Ray instance on this machine. Workers write each row's output
themselves, so ``out`` paths must be on a filesystem every node shares (NFS, a bucket
mount). Ray is an optional extra: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from vidseg_cli.batch.runner import Job, run_job
from vidseg_cli.errors import VidsegError


def _ray():
    try:
        import ray
    except ImportError:
        raise VidsegError('--ray needs Ray: pip install -e ".[ray]"') from None
    return ray


class _Worker:
    """One actor: a process with its threads, its model cache, and rows to run."""

    def __init__(self, threads: int) -> None:
        from vidseg_cli.batch.runner import _worker_start

        _worker_start(threads)

    def run(self, job: Job) -> dict:
        return run_job(job)


ACTOR_THREADS = 2  # CPUs per actor when --jobs does not say how many actors


def run_on_ray(jobs: list[Job], address: str, actors: int | None) -> Iterator[dict]:
    """Results as rows finish, from ``actors`` actors sharing the cluster's CPUs (default:
    one actor per two CPUs)."""
    ray = _ray()
    try:
        ray.init(
            address=None if address == "local" else address,
            include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
        )
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise VidsegError(f"--ray {address}: cannot join the cluster: {str(error).splitlines()[0]}") from None
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        count = max(1, min(actors or cpus // ACTOR_THREADS, len(jobs)))
        threads = max(1, cpus // count)
        worker = ray.remote(num_cpus=threads)(_Worker)
        pool = ray.util.ActorPool([worker.remote(threads) for _ in range(count)])
        yield from pool.map_unordered(lambda actor, job: actor.run.remote(job), jobs)
    finally:
        ray.shutdown()

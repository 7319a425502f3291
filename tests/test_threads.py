"""Threads that follow the cores other processes leave free (vidseg_cli/cores.py): the
policy, and that a fresh `vidseg` process runs under it (the setting, not a timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from vidseg_cli.cores import INTERVAL, THREADS_VARIABLE, CoreShare, Sample, available_cores, others_busy


def test_others_busy_is_the_cores_used_less_our_own():
    before, after = Sample(wall=10.0, busy=100.0, own=5.0), Sample(wall=12.0, busy=103.0, own=6.0)
    assert others_busy(before, after) == pytest.approx(1.0)  # 3 busy core-seconds, 1 ours, over 2 s
    assert others_busy(before, Sample(12.0, 101.0, 6.5)) == 0.0  # never below zero


@pytest.mark.parametrize(("others", "threads"), [(0.0, 4), (0.3, 4), (1.0, 3), (1.5, 2), (2.9, 1), (7.0, 1)])
def test_a_job_takes_the_cores_others_leave_and_at_least_one(others, threads):
    clock = [0.0]
    samples = iter([Sample(1.0, others, 0.0)])  # others' busy core-seconds over 1 s
    share = CoreShare(4, Sample(0.0, 0.0, 0.0), read=lambda: next(samples), clock=lambda: clock[0])
    assert share.threads == threads


def test_it_looks_again_twice_a_second_and_reports_changes_only():
    clock, busy = [0.0], [0.0]

    def read() -> Sample:
        return Sample(clock[0], busy[0], 0.0)

    share = CoreShare(2, Sample(-1.0, 0.0, 0.0), read=read, clock=lambda: clock[0])
    assert share.threads == 2
    clock[0], busy[0] = INTERVAL / 2, 1.0
    assert share.look() is None and share.threads == 2  # not due yet
    clock[0], busy[0] = INTERVAL, INTERVAL  # another process took a whole core since
    assert share.look() == 1
    clock[0] += INTERVAL
    busy[0] += INTERVAL
    assert share.look() is None and share.threads == 1  # still busy: no change to report
    clock[0] += INTERVAL  # it stopped
    assert share.look() == 2 and share.used == {1, 2}


def _segment(clip, tmp_path, *extra: str, env: dict) -> dict:
    video, mask = clip
    out = subprocess.run(
        [sys.executable, "-m", "vidseg_cli", "segment", str(video), "--mask", str(mask), "--size", "64",
         "--out", str(tmp_path / f"out{len(list(tmp_path.iterdir()))}"), "--json", *extra],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["threads"]


@pytest.mark.slow
def test_a_fresh_process_adapts_unless_threads_are_fixed(clip, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != THREADS_VARIABLE}
    cores = available_cores()
    assert _segment(clip, tmp_path, env=env) == {"adaptive": True, "cores": cores, "min": cores, "max": cores}
    assert _segment(clip, tmp_path, "--threads", "1", env=env) == {"adaptive": False, "threads": 1}
    assert _segment(clip, tmp_path, env=dict(env, **{THREADS_VARIABLE: "1"})) == {"adaptive": False, "threads": 1}


@pytest.mark.slow
@pytest.mark.skipif(available_cores() < 2 or not os.path.exists("/proc/stat"), reason="needs 2 cores and /proc/stat")
def test_beside_a_busy_process_a_fresh_process_leaves_it_its_core(clip, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != THREADS_VARIABLE}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        threads = _segment(clip, tmp_path, env=env)
    finally:
        busy.kill()
        busy.wait()
    assert threads["adaptive"] and threads["min"] == available_cores() - 1, threads

"""J rules on hand-made masks; DAVIS-layout loading; the bench command end to end."""

import json

import numpy as np
import pytest

from vidseg_cli.bench.dataset import first_appearances, load_davis
from vidseg_cli.errors import VidsegError
from vidseg_cli.metrics.davis import region_similarity, sequence_j
from vidseg_cli.synthetic import write_davis


def test_j_is_iou_and_one_when_both_empty():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert region_similarity(a, b) == 1.0
    a[0, :2] = True
    assert region_similarity(a, b) == 0.0
    b[0, 1:3] = True
    assert region_similarity(a, b) == pytest.approx(1 / 3)


def test_sequence_j_excludes_first_and_last_frames():
    truth = [np.ones((2, 2), np.uint8)] * 4
    wrong = np.zeros((2, 2), np.uint8)
    predictions = [wrong, truth[1], truth[2], wrong]
    assert sequence_j(predictions, truth, [1]) == {1: 1.0}


def test_first_appearances_give_each_object_on_its_first_frame():
    f0 = np.array([[1, 0], [0, 0]], np.uint8)
    f1 = np.array([[1, 2], [0, 0]], np.uint8)
    f2 = np.array([[1, 2], [3, 0]], np.uint8)
    prompts = first_appearances([f0, f1, f2])
    assert sorted(prompts) == [0, 1, 2]
    assert prompts[1].tolist() == [[0, 2], [0, 0]]  # only the new object
    assert prompts[2].tolist() == [[0, 0], [3, 0]]


def test_load_davis_layout(tmp_path):
    write_davis(tmp_path, sequences=2, length=4, height=32, width=48)
    sequences = load_davis(tmp_path)
    assert [s.name for s in sequences] == ["synthetic-0", "synthetic-1"]
    assert len(sequences[1].truths) == 4 and sequences[1].objects == [1, 2]
    with pytest.raises(VidsegError, match="DAVIS layout"):
        load_davis(tmp_path / "JPEGImages")


def test_bench_runs_a_sweep_on_a_dataset(vidseg, tmp_path):
    write_davis(tmp_path, sequences=2, length=6, height=48, width=64)
    run = vidseg("bench", "--data", tmp_path, "--size", "48", "--memory", "stremn,stm", "--json")
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert [r["memory"] for r in report["results"]] == ["stremn", "stm"]
    for result in report["results"]:
        assert 0 <= result["J"] <= 1 and result["fps"] > 0
        assert set(result["sequences"]) == {"synthetic-0", "synthetic-1"}
    assert "J" in run.stderr and report["machine"]["threads"] >= 1


def test_bench_rejects_unknown_sequences(vidseg, tmp_path):
    write_davis(tmp_path, sequences=1, length=3, height=32, width=32)
    run = vidseg("bench", "--data", tmp_path, "--sequences", "nope")
    assert run.code == 2 and "unknown sequence" in run.stderr

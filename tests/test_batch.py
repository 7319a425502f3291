"""vidseg batch: manifests, failures that do not stop the batch, resume, shards, workers, Ray."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import leftovers
from PIL import Image

from vidseg_cli.batch.manifest import read_manifest, shard
from vidseg_cli.errors import VidsegError
from vidseg_cli.synthetic import write_clip


@pytest.fixture
def manifest(tmp_path) -> Path:
    """5 rows: four small clips and one corrupt video, paths relative to the manifest."""
    for seed in range(4):
        write_clip(tmp_path / f"c{seed}", length=8, height=64, width=96, objects=1 + seed % 2, seed=seed)
    (tmp_path / "bad.mp4").write_bytes((tmp_path / "c0" / "clip.mp4").read_bytes()[:2000])
    rows = ["input,mask,out,size"] + [f"c{i}/clip.mp4,c{i}/mask.png,out/{i},64" for i in range(4)]
    rows.insert(3, "bad.mp4,c0/mask.png,out/bad,64")
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _lines(run) -> list[dict]:
    return [json.loads(line) for line in run.stdout.splitlines()]


def _pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def _assert_rows_equal_separate_runs(vidseg, manifest: Path, tmp_path: Path, *options: str) -> None:
    """Each good row's label PNGs equal those of `vidseg segment` run alone on its video."""
    for i in range(4):
        clip = manifest.parent / f"c{i}"
        alone = tmp_path / f"alone{i}"
        run = vidseg("segment", clip / "clip.mp4", "--mask", clip / "mask.png", "--out", alone, "--size", "64", *options)
        assert run.code == 0, run.stderr
        batch = manifest.parent / "out" / str(i)
        assert _pngs(batch).keys() == _pngs(alone).keys()
        for name, labels in _pngs(alone).items():
            np.testing.assert_array_equal(_pngs(batch)[name], labels)


@pytest.mark.slow
def test_a_failing_row_is_reported_and_the_others_go_on_then_resume_skips(vidseg, manifest):
    start = time.perf_counter()
    run = vidseg("batch", manifest)
    first = time.perf_counter() - start
    assert run.code == 1, run.stderr
    results = _lines(run)
    assert sorted(r["status"] for r in results) == ["failed", "ok", "ok", "ok", "ok"]
    failed = next(r for r in results if r["status"] == "failed")
    assert failed["row"] == 3 and failed["line"] == 4 and "bad.mp4" in failed["error"] and "frames read" in failed["error"]
    assert all(r["frames"] == 8 and r["fps"] > 0 for r in results if r["status"] == "ok")
    out = manifest.parent / "out"
    assert sorted(p.name for p in out.iterdir()) == ["0", "1", "2", "3"] and leftovers(out) == []
    start = time.perf_counter()
    again = vidseg("batch", manifest, "--resume")
    assert time.perf_counter() - start < first / 2
    assert again.code == 1 and sorted(r["status"] for r in _lines(again)) == ["failed"] + ["skipped"] * 4


def test_batch_outputs_equal_separate_segment_runs(vidseg, manifest, tmp_path):
    run = vidseg("batch", manifest, "--format", "all")
    assert run.code == 1
    for i in range(4):
        alone = tmp_path / f"alone{i}"
        clip = manifest.parent / f"c{i}"
        assert vidseg("segment", clip / "clip.mp4", "--mask", clip / "mask.png", "--out", alone, "--size", "64",
                      "--format", "all").code == 0
        batch = manifest.parent / "out" / str(i)
        assert _pngs(batch).keys() == _pngs(alone).keys()
        for name, labels in _pngs(alone).items():
            np.testing.assert_array_equal(_pngs(batch)[name], labels)
        assert (batch / "rle.json").read_text().replace(str(batch), "") == (alone / "rle.json").read_text().replace(str(alone), "")


def test_shards_together_are_the_whole(manifest):
    rows = read_manifest(manifest)
    halves = [shard(rows, "1/2"), shard(rows, "2/2")]
    assert sorted(r.number for half in halves for r in half) == [r.number for r in rows]
    assert not {r.number for r in halves[0]} & {r.number for r in halves[1]}
    thirds = [r.number for i in (1, 2, 3) for r in shard(rows, f"{i}/3")]
    assert sorted(thirds) == [1, 2, 3, 4, 5]


def test_shard_runs_only_its_rows(vidseg, manifest):
    run = vidseg("batch", manifest, "--shard", "2/2")
    assert sorted(r["row"] for r in _lines(run)) == [2, 4]


@pytest.mark.slow
def test_jobs_2_gives_the_same_outputs(vidseg, manifest, tmp_path):
    run = vidseg("batch", manifest, "--jobs", "2")
    assert run.code == 1 and sorted(r["status"] for r in _lines(run)) == ["failed", "ok", "ok", "ok", "ok"]
    _assert_rows_equal_separate_runs(vidseg, manifest, tmp_path)


def test_json_lines_manifest_with_per_row_options(vidseg, tmp_path):
    write_clip(tmp_path / "c", length=6, height=64, width=96, objects=2, seed=1)
    rows = [
        {"input": "c/clip.mp4", "mask": ["c/mask.png"], "out": "a", "size": 64, "format": "video"},
        {"input": "c/clip.mp4", "mask": "c/mask.png", "out": "b", "size": 64, "memory": "fifo", "slots": 2},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run = vidseg("batch", path)
    assert run.code == 0, run.stderr
    assert (tmp_path / "a" / "labels.mkv").is_file() and not (tmp_path / "a" / "00000.png").exists()
    assert (tmp_path / "b" / "00005.png").is_file()


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("input,mask,slots\nv.mp4,m.png,abc\n", "line 2, column slots: 'abc'"),
        ("input,mask,colour\nv.mp4,m.png,red\n", "line 2: unknown column 'colour'"),
        ("input,mask\n,m.png\n", "line 2: column input is empty"),
        ("input,mask,memory\nv.mp4,m.png,lru\n", "line 2, column memory: 'lru' choose from"),
        ("input,mask,task\nv.mp4,m.png,semseg\n", "run `vidseg semseg` on each video"),
        ("input,mask,out\na.mp4,m.png,o\nb.mp4,m.png,o\n", "line 3, column out: "),
        ("input,mask\n", "has no rows"),
        ("input,mask,events\nv.mp4,m.png,-\n", "column events: '-' cannot be stdout"),
    ],
)
def test_bad_manifests_name_the_line_and_column(vidseg, tmp_path, content, text):
    path = tmp_path / "m.csv"
    path.write_text(content)
    with pytest.raises(VidsegError, match="") as error:
        read_manifest(path)
    assert text in str(error.value)
    run = vidseg("batch", path)
    assert run.code == 2 and text in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert run.stdout == ""


def test_bad_json_line_and_bad_shard(vidseg, tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"input": "v.mp4", "mask": "m.png"}\n{"input": \n')
    run = vidseg("batch", path)
    assert run.code == 2 and "line 2: not JSON" in run.stderr
    path.write_text('{"input": "v.mp4", "mask": "m.png"}\n')
    run = vidseg("batch", path, "--shard", "3/2")
    assert run.code == 2 and "--shard 3/2" in run.stderr
    assert vidseg("batch", tmp_path / "none.csv").code == 2


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install -e '.[ray]')")
def test_local_ray_cluster_gives_the_same_outputs(vidseg, manifest, tmp_path):
    run = vidseg("batch", manifest, "--ray", "local", "--jobs", "2")  # a local Ray instance, two actors
    assert run.code == 1, run.stderr
    assert sorted(r["status"] for r in _lines(run)) == ["failed", "ok", "ok", "ok", "ok"]
    _assert_rows_equal_separate_runs(vidseg, manifest, tmp_path)

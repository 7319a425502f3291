"""J rules on hand-made masks; DAVIS-layout loading; the bench command end to end."""

import json
import time

import numpy as np
import pytest
import torch
from conftest import leftovers
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from vidseg_cli.bench.report import markdown, pivot
from vidseg_cli.engine.job import make_bank
from vidseg_cli.errors import VidsegError
from vidseg_cli.metrics.davis import (
    ObjectScore,
    Statistics,
    boundary_f_measure,
    boundary_map,
    dilate_disk,
    evaluate_sequence,
    j_and_f,
    region_similarity,
    statistics,
)
from vidseg_cli.options import MemoryOptions
from vidseg_cli.synthetic import frames, write_davis
from vidseg_cli.vos.davis import first_appearances, load_davis
from vidseg_cli.vos.models import create_vos_model
from vidseg_cli.vos.session import VOSSession


def test_j_is_iou_and_one_when_both_empty():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert region_similarity(a, b) == 1.0
    a[0, :2] = True
    assert region_similarity(a, b) == 0.0
    b[0, 1:3] = True
    assert region_similarity(a, b) == pytest.approx(1 / 3)


def test_scores_exclude_first_and_last_frames():
    truth = [np.ones((4, 4), np.uint8)] * 4
    wrong = np.zeros((4, 4), np.uint8)
    predictions = [wrong, truth[1], truth[2], wrong]
    score = evaluate_sequence(predictions, truth, [1])[1]
    assert score.j.mean == 1.0 and score.f.mean == 1.0


def test_boundary_map_follows_the_reference_neighbours():
    seg = np.zeros((4, 4), bool)
    seg[1:3, 1:3] = True
    expected = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], bool)
    assert np.array_equal(boundary_map(seg), expected)


def square(size: int, top: int, left: int, side: int = 40) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_f_measure_tolerance_and_edge_cases():
    truth = square(100, 30, 30)  # diagonal 141 px: tolerance ceil(1.13) = 2 px
    assert boundary_f_measure(truth, truth) == 1.0
    assert boundary_f_measure(square(100, 32, 30), truth) == 1.0  # within 2 px
    assert boundary_f_measure(square(100, 33, 30), truth) < 1.0  # 3 px off
    empty = np.zeros((100, 100), bool)
    assert boundary_f_measure(empty, empty) == 1.0  # nothing to find, nothing found
    assert boundary_f_measure(empty, truth) == 0.0  # precision 1, recall 0
    assert boundary_f_measure(truth, empty) == 0.0  # precision 0, recall 1


@pytest.mark.parametrize("radius", [1, 2, 5, 8])
def test_disk_dilation_matches_a_convolution_with_the_disk(radius):
    rng = np.random.default_rng(radius)
    mask = rng.random((40, 57)) > 0.97
    ys, xs = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = (xs**2 + ys**2 <= radius**2).astype(np.float32)
    reference = torch.nn.functional.conv2d(
        torch.from_numpy(mask.astype(np.float32))[None, None], torch.from_numpy(disk)[None, None], padding=radius
    )[0, 0].numpy() > 0
    assert np.array_equal(dilate_disk(mask, radius), reference)
    assert not dilate_disk(np.zeros((5, 5), bool), radius).any()


def test_statistics_mean_recall_and_decay():
    stats = statistics([1, 1, 1, 1, 0, 0, 0, 0])
    assert stats == Statistics(mean=0.5, recall=0.5, decay=1.0)
    assert statistics([0.6] * 10).decay == 0.0


def test_decay_does_not_wrap_past_256_frames():
    """The reference keeps bin edges in uint8: 300 frames wrap and mix up the bins."""
    values = [1.0] * 150 + [0.0] * 150
    assert statistics(values).decay == 1.0


def test_j_and_f_average_over_all_objects():
    scores = [
        ObjectScore(Statistics(0.8, 1, 0), Statistics(0.6, 1, 0)),
        ObjectScore(Statistics(0.4, 0, 0), Statistics(0.2, 0, 0)),
    ]
    summary = j_and_f(scores)
    assert summary["J"] == pytest.approx(0.6) and summary["F"] == pytest.approx(0.4)
    assert summary["J&F"] == pytest.approx(0.5)


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


@pytest.mark.slow
def test_bench_runs_a_sweep_on_a_dataset(vidseg, tmp_path):
    write_davis(tmp_path, sequences=2, length=6, height=48, width=64)
    run = vidseg("bench", "--data", tmp_path, "--size", "48", "--memory", "stremn,stm", "--device", "cpu", "--json")
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert [r["memory"] for r in report["results"]] == ["stremn", "stm"]
    for result in report["results"]:
        assert 0 <= result["J"] <= 1 and 0 <= result["F"] <= 1 and result["fps"] > 0
        assert result["J&F"] == pytest.approx((result["J"] + result["F"]) / 2, abs=1e-3)
        assert set(result["sequences"]) == {"synthetic-0", "synthetic-1"}
        assert len(result["sequences"]["synthetic-0"]["memory_bytes"]) == 6  # one per frame
        assert result["gflops"] > 0.01 and result["peak_cuda_mb"] is None
    assert "J&F" in run.stderr and report["machine"]["threads"] >= 1 and report["device"] == "cpu"


def test_flops_count_what_is_computed():
    """The backbone's convolutions plus one global match against the first (permanent) slot."""
    model = create_vos_model("propagate")
    session = VOSSession(model, make_bank(MemoryOptions(), model.fusion()), 64, torch.device("cpu"))
    counts = []
    for index, (image, truth) in enumerate(frames(2, 64, 64, objects=1, seed=0)):
        counter = FlopCounterMode(display=False)
        with counter:
            session.step(image, truth if index == 0 else None)
        counts.append(counter.get_flop_counts()["Global"])
    first, second = ({str(op): n for op, n in c.items()} for c in counts)
    assert set(first) == {"aten.convolution"}  # nothing in memory yet: no matching
    assert second["aten.convolution"] == first["aten.convolution"]
    pixels, channels = 8 * 8, 40 + 112  # stride-8 grid of a 64x64 frame; s8 + s16 key channels
    assert second["aten.mm"] == 2 * pixels * pixels * channels


@pytest.mark.slow
def test_bench_writes_json_and_plot_files_and_keeps_existing_ones(vidseg, tmp_path):
    write_davis(tmp_path / "data", sequences=1, length=4, height=32, width=48)
    report, figure = tmp_path / "out" / "report.json", tmp_path / "out" / "bench.png"
    args = ("bench", "--data", tmp_path / "data", "--size", "32,48", "--report", report, "--plot", figure)
    run = vidseg(*args)
    assert run.code == 0, run.stderr
    assert run.stdout == "" and len(json.loads(report.read_text())["results"]) == 2
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 500
    report.write_text("precious")
    again = vidseg(*args)
    assert again.code == 2 and "already exists" in again.stderr and report.read_text() == "precious"
    assert vidseg(*args, "--force").code == 0 and json.loads(report.read_text())["results"]
    assert leftovers(tmp_path / "out") == []


def test_bench_plot_needs_a_png_path(vidseg, tmp_path):
    run = vidseg("bench", "--plot", tmp_path / "figure.svg")
    assert run.code == 2 and ".png" in run.stderr


def test_bench_rejects_unknown_sequences(vidseg, tmp_path):
    write_davis(tmp_path, sequences=1, length=3, height=32, width=32)
    run = vidseg("bench", "--data", tmp_path, "--sequences", "nope")
    assert run.code == 2 and "unknown sequence" in run.stderr


def test_bench_csv_rows(vidseg, tmp_path):
    data = write_davis(tmp_path / "data", sequences=1, length=4, height=32, width=48)
    table = tmp_path / "results.csv"
    run = vidseg("bench", "--data", data, "--size", "32,48", "--csv", table)
    assert run.code == 0, run.stderr
    assert run.stdout == ""
    lines = table.read_text().splitlines()
    assert lines[0].startswith("config,model,size") and "J&F" in lines[0]
    assert len(lines) == 3  # header + one row per size


def test_bench_sparse_needs_a_learned_model_and_a_known_mode(vidseg):
    run = vidseg("bench", "--sparse", "triple", "--model", "propagate")
    assert run.code == 2 and "--sparse needs a learned memory network" in run.stderr
    run = vidseg("bench", "--sparse", "dense")
    assert run.code == 2 and "unknown --sparse 'dense'" in run.stderr


def test_bench_flip_tta_runs_both_views_and_refuses_skipping_work(vidseg, tmp_path):
    write_davis(tmp_path, sequences=1, length=5, height=48, width=64)
    run = vidseg("bench", "--data", tmp_path, "--model", "propagate", "--size", "48", "--tta", "none,flip", "--json")
    assert run.code == 0, run.stderr
    plain, flipped = json.loads(run.stdout)["results"]
    assert (plain["tta"], flipped["tta"]) == ("none", "flip") and flipped["config"].endswith("tta=flip")
    assert flipped["gflops"] == pytest.approx(2 * plain["gflops"], rel=0.05)  # two views, two memories
    memory = [r["sequences"]["synthetic-0"]["memory_bytes"] for r in (plain, flipped)]
    assert memory[1] == [2 * b for b in memory[0]]
    run = vidseg("bench", "--data", tmp_path, "--tta", "flip", "--reuse", "0.7")
    assert run.code == 2 and "cannot be combined" in run.stderr
    run = vidseg("bench", "--data", tmp_path, "--tta", "mirror")
    assert run.code == 2 and "unknown --tta 'mirror'" in run.stderr


@pytest.mark.slow
def test_bench_reuse_needs_region_gates(vidseg):
    run = vidseg("bench", "--model", "propagate", "--reuse", "0.7")
    assert run.code == 2 and "--reuse needs region gates and none ship for propagate" in run.stderr


def test_bench_long_shows_stremn_flat_and_stm_growing(vidseg, tmp_path):
    figure = tmp_path / "memory.png"
    run = vidseg("bench", "--long", "40", "--size", "32", "--memory", "stremn,stm", "--json", "--plot", figure)
    assert run.code == 0, run.stderr
    assert Image.open(figure).format == "PNG"
    stremn, stm = json.loads(run.stdout)["results"]
    assert len(stremn["series"]["latency_ms"]) == len(stremn["series"]["frame"])
    assert stremn["slots_end"] == 5 and max(stremn["series"]["slots"]) == 5
    assert len(set(stremn["series"]["memory_bytes"][4:])) == 1  # flat once full (5 writes)
    assert stm["slots_end"] == 1 + 39 // 5 + 1  # frame 0, every 5th frame, the previous one
    assert stm["memory_mb_end"] > stremn["memory_mb_end"]


def test_markdown_tables_from_a_report():
    row = {"config": "c", "J&F": 0.5, "J": 0.6, "F": 0.4, "fps": 3.0, "model_fps": 3.1, "latency_ms_median": 300,
           "latency_ms_p90": 350, "gflops": 9.41, "max_slots": 5, "max_memory_mb": 10.5, "update": "A", "slots": 5}
    report = {"results": [row, {**row, "update": "C", "J&F": 0.75}]}
    table = markdown(report).splitlines()
    assert len(table) == 4 and table[2].startswith("| c | 0.500 | 0.600 | 0.400 | 3.00 |") and "9.4" in table[2]
    grid = pivot(report, "update", "slots", "J&F").splitlines()
    assert grid[2:] == ["| A | 0.500 |", "| C | 0.750 |"]
    sparse = {"results": [{**row, "sparse": "none", "computed_share": 1.0, "reuse_rate": 0.0},
                          {**row, "sparse": "triple", "computed_share": 0.3, "reuse_rate": 0.25}]}
    lines = markdown(sparse).splitlines()
    assert lines[0].endswith("| frames reused | area computed |") and lines[3].endswith("| 0.250 | 0.300 |")


def test_bench_compares_fusion_cells(vidseg, tmp_path):
    write_davis(tmp_path, sequences=1, length=10, height=48, width=64)
    run = vidseg("bench", "--data", tmp_path, "--size", "48", "--slots", "3", "--update", "A", "--runtime", "torch",
                 "--fusion", "model,training-free,none", "--memory", "stremn,fifo", "--json")
    assert run.code == 0, run.stderr
    labels = [r["config"] for r in json.loads(run.stdout)["results"]]
    assert labels == ["vos-effl0-v2 48p stremn K=3 A", "vos-effl0-v2 48p stremn K=3 A fusion=training-free",
                      "vos-effl0-v2 48p stremn K=3 A fusion=none", "vos-effl0-v2 48p fifo K=3"]  # the default model
    assert vidseg("bench", "--fusion", "magic").code == 2


def test_bench_runs_sparse_and_reuse_with_what_ships(vidseg, tmp_path):
    """No gate file to train first: the default model's gates ship in the package."""
    write_davis(tmp_path, sequences=1, length=12, height=64, width=96)
    run = vidseg("bench", "--data", tmp_path, "--size", "64", "--sparse", "none,triple", "--reuse", "1,0.7", "--json")
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    rows = {(r["sparse"], r["reuse"]): r for r in report["results"]}
    assert set(rows) == {("none", 1.0), ("triple", 1.0), ("none", 0.7), ("triple", 0.7)}
    assert rows[("none", 1.0)]["computed_share"] == 1.0 and rows[("none", 1.0)]["reuse_rate"] == 0.0
    assert rows[("triple", 1.0)]["computed_share"] < 1.0
    assert 0 <= report["oracle"]["reuse_rate"] <= 1 and report["oracle"]["loss"] <= 1.0
    assert "oracle bound" in run.stderr


def test_a_profile_adds_up_to_the_frame_and_costs_nothing_when_off():
    from vidseg_cli.engine.profile import Profile, recording, stage

    with stage("trunk"):  # no profile recording: nothing to record into, nothing fails
        pass
    profile = Profile()
    for _ in range(3):
        with recording(profile):
            with stage("encode"):
                pass
            with stage("trunk"):  # twice in a frame (the mirrored pass of --tta): counted twice
                time.sleep(0.002)
            with stage("trunk"):
                time.sleep(0.002)
        profile.add("decode", 0.001)
        profile.end_frame(0.010)
    summary = profile.summary()
    assert list(summary) == ["decode", "trunk", "encode", "other"]  # the frame's path, other last
    assert summary["trunk"]["median_ms"] >= 4 and summary["decode"]["median_ms"] == 1.0
    assert sum(s["median_ms"] for s in summary.values()) == pytest.approx(10, abs=0.05)


def test_bench_profile_breaks_each_frame_down_by_stage(vidseg, tmp_path):
    write_davis(tmp_path / "data", sequences=1, length=8, height=48, width=64)
    run = vidseg("bench", "--data", tmp_path / "data", "--size", "48", "--profile", "--json", "--csv", tmp_path / "rows.csv")
    assert run.code == 0, run.stderr
    assert "trunk median ms" in (tmp_path / "rows.csv").read_text().splitlines()[0]
    result = json.loads(run.stdout)["results"][0]
    stages = result["profile"]
    assert list(stages)[:3] == ["decode", "resize", "trunk"] and list(stages)[-1] == "other"
    assert {"memory read", "decoder", "memory write", "upsample", "encode"} <= set(stages)
    assert "by stage" in run.stderr
    refused = vidseg("bench", "--task", "predict", "--profile")
    assert refused.code == 2 and "--profile" in refused.stderr and "Traceback" not in refused.stderr


def test_write_every_is_swept_like_the_other_options():
    from vidseg_cli.vos.bench import configs

    sweep = configs(["propagate"], [64], ["stremn"], [5], ["C"], [5], write_everies=(1, 2))
    assert [c.memory.write_every for c in sweep] == [1, 2] and sweep[1].label.endswith("write/2")

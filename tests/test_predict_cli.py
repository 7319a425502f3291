"""`vidseg predict`: windows, --compare, --stream, outputs and bad input, with a tiny
untrained predictor (which copies the last frame: the decoder starts at zero change)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from vidseg_cli.predict.data import blob_digits, sequence, with_surprise, write_frames
from vidseg_cli.predict.model import Predictor, PredictorConfig, predictor_file

TINY = PredictorConfig(width=8, blocks=1, key_dim=8, value_dim=8, fusion_hidden=8)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    tensors, metadata = predictor_file(Predictor(TINY))
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def history_model_file(tmp_path_factory) -> Path:
    """The tiny predictor reading the last 5 frames (blank before the first)."""
    path = tmp_path_factory.mktemp("model") / "history5.safetensors"
    tensors, metadata = predictor_file(Predictor(PredictorConfig(**{**TINY.__dict__, "history": 5})))
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return blob_digits(20)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, digits) -> tuple[Path, np.ndarray]:
    """20 frames of Moving MNIST (from blob digits) as an exact PNG folder."""
    frames = sequence(np.random.default_rng(3), digits)
    folder = tmp_path_factory.mktemp("clip") / "frames"
    write_frames(frames, folder)
    return folder, frames


def _decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_predict_writes_the_frames_after_the_context_named_by_index(vidseg, model_file, clip, tmp_path):
    folder, frames = clip
    out = tmp_path / "out"
    run = vidseg("predict", folder, "--start", "2", "--context", "10", "--frames", "5", "--model", model_file, "--out", out)
    assert run.code == 0, run.stderr
    assert Path(run.stdout.strip()) == out.resolve()
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == [f"{i:05d}.png" for i in range(12, 17)] + ["prediction.mp4"]
    first = Image.open(out / "00012.png")
    assert first.mode == "L" and first.size == (64, 64)
    # untrained = copy-last: every predicted frame is the last observed one (frame 11)
    np.testing.assert_allclose(np.asarray(first, np.int16), frames[11].astype(np.int16), atol=1)
    video = _decoded(out / "prediction.mp4")
    assert len(video) == 15 and min(video[0].shape[:2]) >= 256  # 10 observed + 5 predicted, shown large
    red, green = video[-1][1, 1], video[0][1, 1]  # the border marks where prediction starts
    assert red[0] > 150 > red[1] and green[1] > 150 > green[0]


def test_default_window_is_the_last_frames(vidseg, model_file, clip, tmp_path):
    folder, _ = clip
    run = vidseg("predict", folder, "--model", model_file, "--out", tmp_path / "o", "--format", "png", "--frames", "3")
    assert run.code == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == ["00020.png", "00021.png", "00022.png"]
    assert not (tmp_path / "o" / "prediction.mp4").exists()


def test_compare_scores_every_horizon_against_the_truth(vidseg, model_file, clip, tmp_path):
    folder, frames = clip
    run = vidseg("predict", folder, "--start", "0", "--model", model_file, "--out", tmp_path / "c", "--compare", "--json")
    assert run.code == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["context"] == [0, 9] and summary["predicted"] == [10, 19]
    metrics = summary["metrics"]
    assert all(len(metrics[name]) == 10 for name in ("mse", "mae", "ssim", "psnr"))
    last = frames[9].astype(np.float64) / 255
    expected = [float(((last - frames[t] / 255) ** 2).sum()) for t in range(10, 20)]
    np.testing.assert_allclose(metrics["mse"], expected, rtol=0.02, atol=0.5)  # copy-last, by hand
    np.testing.assert_allclose(metrics["copy_last_mse"], expected, rtol=1e-4)  # the baseline, exactly
    assert metrics["mean"]["mse"] == pytest.approx(np.mean(metrics["mse"]), rel=1e-3)
    panels = _decoded(tmp_path / "c" / "comparison.mp4")
    assert len(panels) == 10 and panels[0].shape[1] > 3 * panels[0].shape[0]  # truth | prediction | error


@pytest.mark.parametrize("history", [3, 5])
def test_stream_prints_one_error_record_per_frame(vidseg, model_file, history_model_file, digits, tmp_path, history):
    frames = sequence(np.random.default_rng(5), digits, frames=30)
    planted = with_surprise(frames, np.random.default_rng(6), digits, appear_at=20)
    write_frames(planted, tmp_path / "s")
    run = vidseg("predict", tmp_path / "s", "--model", model_file if history == 3 else history_model_file, "--stream")
    assert run.code == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["frame"] for r in records] == list(range(3, 30))
    assert set(records[0]) == {"frame", "time", "mse", "mae", "ssim", "copy_last_mse"}
    assert records[1]["time"] == pytest.approx(4 / 25)  # a frame folder runs at 25 fps
    for record in records:  # untrained: the prediction is the previous frame
        assert record["mse"] == pytest.approx(record["copy_last_mse"], rel=0.02, abs=0.5)
    assert not list(tmp_path.glob("s_prediction*"))  # --stream writes no files


def test_memory_none_and_force(vidseg, model_file, clip, tmp_path):
    folder, _ = clip
    out = tmp_path / "n"
    args = ("predict", folder, "--model", model_file, "--out", out, "--memory", "none", "--json")
    first = vidseg(*args)
    assert first.code == 0, first.stderr
    assert json.loads(first.stdout)["bank_bytes"] == 0
    again = vidseg(*args)
    assert again.code == 2 and "--force" in again.stderr
    assert vidseg(*args, "--force").code == 0


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("--context", "25"), "has 20 frame(s); --context 25 needs at least 25"),
        (("--start", "20"), "--start 20 is past the end"),
        (("--start", "15"), "ends at frame 19"),
        (("--start", "5", "--compare"), "use --frames 5 or less"),
        (("--compare",), "--compare needs --start"),
        (("--context", "2"), "at least 3"),
        (("--model", "vos-effl0"), "is a vos model, not a video predictor"),
        (("--stream", "--json"), "drop --json"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(vidseg, model_file, clip, tmp_path, args, text):
    folder, _ = clip
    if "--model" not in args:
        args = (*args, "--model", str(model_file))
    run = vidseg("predict", folder, "--out", tmp_path / "bad", *args)
    assert run.code == 2 and text in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert list(tmp_path.iterdir()) == []  # no output, no staging folder


def test_a_vos_checkpoint_file_is_refused(vidseg, clip, tmp_path):
    vos_file = Path(__file__).resolve().parents[1] / "vidseg_cli" / "weights" / "vos-effl0.safetensors"
    run = vidseg("predict", clip[0], "--model", vos_file, "--out", tmp_path / "x")
    assert run.code == 2 and "is not a video predictor (arch 'memnet'" in run.stderr


def test_a_predictor_is_refused_by_segment(vidseg, model_file, clip, tmp_path):
    folder, frames = clip
    mask = tmp_path / "mask.png"
    Image.fromarray((frames[0] > 0).astype(np.uint8)).save(mask)
    run = vidseg("segment", folder, "--mask", mask, "--model", model_file, "--out", tmp_path / "m")
    assert run.code == 2 and "predict-stremn" in run.stderr


def test_bench_predict_reports_copy_last_and_each_memory(vidseg, model_file, tmp_path):
    from vidseg_cli.predict.bench import test_sequences

    run = vidseg("bench", "--task", "predict", "--model", model_file, "--memory", "stremn", "--slots", "3",
                 "--limit", "4", "--timed", "1", "--json", "--csv", tmp_path / "rows.csv", "--plot", tmp_path / "p.png")
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    names = [r["config"] for r in report["results"]]
    assert names == ["copy-last", f"{model_file} / stremn K=3 C", f"{model_file} / none"]  # baselines added
    _, stream, count = test_sequences(None, 4)
    clips = [c.astype(np.float64) / 255 for c in stream]
    by_hand = np.mean([[((c[9] - c[t]) ** 2).sum() for t in range(10, 20)] for c in clips], axis=0)
    copy_last, stremn, none = report["results"]
    np.testing.assert_allclose(copy_last["per_horizon"]["mse"], by_hand, rtol=1e-4)
    assert copy_last["sequences"] == count == 4
    assert stremn["mse"] == pytest.approx(copy_last["mse"], rel=0.02)  # untrained: copies the last frame
    assert stremn["fps"] > 0 and stremn["gflops"] > none["gflops"] > 0  # the memory read and fusion cost FLOPs
    assert stremn["bank_bytes"] > 0 == none["bank_bytes"]
    assert (tmp_path / "p.png").stat().st_size > 0
    assert (tmp_path / "rows.csv").read_text().splitlines()[0].startswith("config,model,memory")


def test_bench_predict_bad_memory_is_one_line(vidseg, model_file):
    run = vidseg("bench", "--task", "predict", "--model", model_file, "--memory", "lru", "--limit", "1")
    assert run.code == 2 and "unknown memory 'lru'" in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_offline_example_runs_on_the_packaged_digits(vidseg, tmp_path):
    """The README's predict example with no ../shared: a clip from the 300 held-out digits
    shipped in the package, predicted by the embedded model better than copying the last frame."""
    import subprocess
    import sys

    from vidseg_cli.predict.data import example_digits, sequence_at

    digits = example_digits()
    assert digits.shape == (300, 28, 28) and digits.dtype == np.uint8 and (digits.reshape(300, -1).max(1) > 200).all()
    clip = tmp_path / "mmnist.mp4"
    made = subprocess.run([sys.executable, "-m", "vidseg_cli.predict.data", str(clip), "--index", "7"],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0 and made.stdout.strip() == str(clip), made.stderr
    run = vidseg("predict", clip, "--start", "0", "--compare", "--out", tmp_path / "p", "--json")
    assert run.code == 0, run.stderr
    mse = json.loads(run.stdout)["metrics"]["mean"]["mse"]
    frames = sequence_at(digits, 7, 20).astype(np.float64) / 255
    copy_last = np.mean([((frames[9] - frames[t]) ** 2).sum() for t in range(10, 20)])
    assert mse < copy_last / 2, (mse, copy_last)


@pytest.mark.parametrize(("args", "code", "text"), [
    (["--digits", "missing.csv.gz"], 2, "error: MNIST digits not found: missing.csv.gz"),
    (["--index", "10000"], 2, "error: --index 10000: between 0 and 9999"),
])
def test_example_writer_errors_are_one_line(tmp_path, args, code, text):
    import subprocess
    import sys

    made = subprocess.run([sys.executable, "-m", "vidseg_cli.predict.data", str(tmp_path / "x.mp4"), *args],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == code and made.stderr.strip().splitlines() == [text]


def test_bench_predict_scores_colour_videos_window_by_window(vidseg, tmp_path):
    """--data DIR: every 20-frame window of each video at the model's size, errors summed over
    channels; an untrained colour model copies the last frame."""
    from vidseg_cli.predict.clips import VideoClips

    folder = tmp_path / "videos"
    rng = np.random.default_rng(0)
    for name, frames in (("a", 45), ("b", 20), ("short", 12)):  # 2 windows, 1, none
        write_frames(rng.integers(0, 256, (frames, 32, 48, 3), dtype=np.uint8), folder / name)
    colour = PredictorConfig(**{**TINY.__dict__, "channels": 3, "frame_height": 32, "frame_width": 48})
    model = tmp_path / "colour.safetensors"
    tensors, metadata = predictor_file(Predictor(colour))
    save_file(tensors, str(model), metadata=metadata)
    run = vidseg("bench", "--task", "predict", "--data", folder, "--model", model, "--memory", "none", "--timed", "1", "--json")
    assert run.code == 0, run.stderr
    copy_last, none = json.loads(run.stdout)["results"]
    clips = [c.astype(np.float64) / 255 for c in VideoClips(folder, 32, 3).windows()]
    assert copy_last["sequences"] == len(clips) == 3
    by_hand = np.mean([[((c[9] - c[t]) ** 2).sum() for t in range(10, 20)] for c in clips], axis=0)
    np.testing.assert_allclose(copy_last["per_horizon"]["mse"], by_hand, rtol=1e-4)
    assert none["mse"] == pytest.approx(copy_last["mse"], rel=0.02)
    wide = vidseg("bench", "--task", "predict", "--data", folder, "--model", "predict-mmnist-v2", "--limit", "1")
    assert wide.code == 2 and "64x64" in wide.stderr and len(wide.stderr.strip().splitlines()) == 1
    alone = vidseg("bench", "--task", "predict", "--data", folder, "--model", "copy-last", "--limit", "1")
    assert alone.code == 2 and "copy-last alone has no frame size" in alone.stderr and len(alone.stderr.strip().splitlines()) == 1
    digits = vidseg("bench", "--task", "predict", "--model", model, "--limit", "1")  # Moving MNIST: grey 64x64
    assert digits.code == 2 and "48x32 with 3 channels" in digits.stderr and len(digits.stderr.strip().splitlines()) == 1

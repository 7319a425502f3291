"""Shared fixtures: small synthetic clips written to disk, and a CLI runner."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from PIL import Image
from typer.testing import CliRunner

from vidseg_cli.cli.app import eager_app
from vidseg_cli.io.sinks import save_palette_png
from vidseg_cli.synthetic import frames, write_clip

# Property tests: a few dozen examples each in the suite; the long fuzz run is
# `python -m pytest tests/test_fuzz.py --hypothesis-profile=fuzz` (the option loads it later).
_FIXTURES_OK = [HealthCheck.function_scoped_fixture]  # tmp_path is only a scratch folder
settings.register_profile("quick", max_examples=40, deadline=None, suppress_health_check=_FIXTURES_OK)
settings.register_profile("fuzz", max_examples=5000, deadline=None, suppress_health_check=_FIXTURES_OK)
settings.load_profile("quick")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", help="also run the tests marked slow (what CI runs)")


def pytest_collection_modifyitems(config, items):
    """``python -m pytest`` is the developer's quick run; the tests marked slow (each over
    about 2 s: whole trainings, killed and resumed runs, ONNX exports, Ray) run with --all."""
    if config.getoption("--all"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(autouse=True)
def ieee_floats_again():
    """vidseg's jobs flush denormal floats to zero for the whole process (use_all_cores), as a
    one-shot CLI process may; jobs run in this process here, and hypothesis needs IEEE floats."""
    yield
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_flush_denormal(False)


@pytest.fixture(autouse=True, scope="session")
def scratch_cache(tmp_path_factory):
    """Graphs that --runtime auto makes for ONNX Runtime go to a scratch folder shared by
    the suite, not to the user's cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("VIDSEG_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()


@pytest.fixture(autouse=True, scope="session")
def every_core_fixed():
    """Jobs in the suite run on every core, fixed (as a job alone does), so that runs
    compared with each other run with the same threads whatever else the machine does;
    tests/test_threads.py checks the adaptive default in fresh processes without it."""
    from vidseg_cli.cores import THREADS_VARIABLE, available_cores

    patch = pytest.MonkeyPatch()
    patch.setenv(THREADS_VARIABLE, os.environ.get(THREADS_VARIABLE) or str(available_cores()))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    """(clip.mp4, mask.png): 12 frames of 96x128, two objects."""
    return write_clip(tmp_path_factory.mktemp("clip"), length=12, height=96, width=128, objects=2, seed=1)


@pytest.fixture
def frame_folder(tmp_path) -> tuple[Path, list[np.ndarray]]:
    """A folder of 8 PNG frames (odd size 67x91) and the ground-truth label maps."""
    folder = tmp_path / "frames"
    folder.mkdir()
    labels = []
    for index, (image, gt) in enumerate(frames(8, 67, 91, objects=2, seed=3)):
        Image.fromarray(image).save(folder / f"frame{index}.png")
        labels.append(gt)
    return folder, labels


@pytest.fixture
def write_mask(tmp_path):
    def write(labels: np.ndarray, name: str = "mask.png") -> Path:
        path = tmp_path / name
        save_palette_png(labels, path)
        return path

    return write


class Run:
    def __init__(self, result):
        self.code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exception = result.exception


@pytest.fixture
def vidseg():
    runner = CliRunner()
    app = eager_app()

    def invoke(*args: str) -> Run:
        return Run(runner.invoke(app, [str(a) for a in args]))

    return invoke


def encoded_clip(path: Path, frames: int = 30, **options: str) -> bytes:
    """A 128x96 clip of random frames (mpeg4, 25 fps) written with container ``options``;
    ``frames=0`` writes the header alone (a stream with no frame). Returns its bytes."""
    import av

    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(frames):
            image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if frames == 0:
            container.start_encoding()
    return path.read_bytes()


def leftovers(folder: Path) -> list[str]:
    """Staging folders a failed run must not leave behind."""
    return [p.name for p in folder.iterdir() if ".partial" in p.name or p.name.endswith(".old")]


@pytest.fixture
def camvid(tmp_path):
    """A tiny labelled video in CamVid's SegNet layout (see tiny_camvid)."""
    return tiny_camvid(tmp_path / "camvid")


def tiny_camvid(tmp_path):
    """Two splits of two sequences; the label is the colour band each pixel lies in."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        (tmp_path / split).mkdir(parents=True)
        (tmp_path / f"{split}annot").mkdir()
        for sequence in ("0001TP", "0016E5"):
            for number in range(count):
                offset = int(rng.integers(0, 16))
                label = ((np.arange(64)[None, :] + offset) // 16 % 4).repeat(48, 0).astype(np.uint8)
                label[:4] = 11  # void
                image = (np.stack([label * 60, 255 - label * 60, label * 20], axis=2)).astype(np.uint8)
                Image.fromarray(image).save(tmp_path / split / f"{sequence}_{number * 30:06d}.jpg")
                Image.fromarray(label).save(tmp_path / f"{split}annot" / f"{sequence}_{number * 30:06d}.png")
    return tmp_path


@pytest.fixture
def digits_file(tmp_path) -> Path:
    """1,000 random "digits" in the mnist_5k layout (two classes of 500)."""
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, 256, (1000, 784)), (np.arange(1000) // 500)[:, None]], axis=1)
    path = tmp_path / "digits.csv.gz"
    with gzip.open(path, "wt") as handle:
        np.savetxt(handle, rows, fmt="%d", delimiter=",")
    return path

"""Moving MNIST by the standard rules; the held-out test set pinned by its checksum."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
from conftest import SHARED_DATA

from vidseg_cli.errors import VidsegError
from vidseg_cli.predict.data import checksum, held_out_set, load_digits, sequence, sequences, trajectory

MNIST = SHARED_DATA / "mnist" / "mnist_5k.csv.gz"


class _Fixed:
    """An rng whose draws are given: start y, x, then the direction's share of 2 pi."""

    def __init__(self, y: float, x: float, turn: float) -> None:
        self.values = [y, x, turn]

    def random(self, size: int | None = None):
        if size is None:
            return self.values.pop(0)
        drawn, self.values = self.values[:size], self.values[size:]
        return np.array(drawn)

    def integers(self, high: int) -> int:
        return 0


def test_a_digit_moves_a_tenth_of_its_range_per_step_and_bounces_clamped():
    # straight down (theta = pi / 2) from y = 0.95: the first step reaches 1.05, is clamped to
    # 1 and turns back: 1.0, 0.9, 0.8 ... of the 36-pixel range
    positions = trajectory(_Fixed(0.95, 0.5, 0.25), frames=4)
    assert positions[:, 0].tolist() == [36, int(36 * 0.9), int(36 * 0.8), int(36 * 0.7)]
    assert positions[:, 1].tolist() == [int(36 * (0.5 + 0.1 * math.cos(math.pi / 2) * (t + 1))) for t in range(4)]
    free = trajectory(np.random.default_rng(3), frames=200)
    assert free.min() >= 0 and free.max() <= 36
    steps = np.abs(np.diff(free, axis=0))
    assert steps.max() <= 4  # 3.6 pixels a step, truncated


def test_digits_combine_by_maximum_and_sequences_repeat_by_seed():
    digits = np.zeros((2, 28, 28), np.uint8)
    digits[0, :, :14], digits[1, :, 14:] = 200, 100
    frames = sequence(np.random.default_rng(0), digits, frames=20)
    assert frames.shape == (20, 64, 64) and frames.dtype == np.uint8
    assert set(np.unique(frames).tolist()) <= {0, 100, 200}
    again = list(sequences(digits, seed=5, count=3))
    assert all(np.array_equal(a, b) for a, b in zip(again, sequences(digits, seed=5, count=3), strict=True))
    assert not np.array_equal(again[0], next(iter(sequences(digits, seed=6, count=1))))


def test_digits_split_400_of_each_500_for_training(tmp_path):
    rows = np.zeros((1000, 785), np.uint8)
    rows[:, 0] = np.arange(1000) % 256  # a pixel that tells the rows apart
    rows[:, -1] = np.arange(1000) // 500  # two classes of 500, sorted by class
    path = tmp_path / "digits.csv.gz"
    with gzip.open(path, "wt") as handle:
        np.savetxt(handle, rows, fmt="%d", delimiter=",")
    train, test = load_digits(path)
    assert train.shape == (800, 28, 28) and test.shape == (200, 28, 28)
    held_out = [i for i in range(1000) if i % 500 >= 400]
    assert test[:, 0, 0].tolist() == [i % 256 for i in held_out]
    path.write_bytes(b"not gzip")
    with pytest.raises(VidsegError, match="cannot read MNIST digits"):
        load_digits(path)


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.is_file(), reason="../shared/data is not available")
def test_the_held_out_test_set_is_the_same_on_every_machine():
    assert checksum(held_out_set(MNIST)) == "9c0e0a8749ad618b910d3d0529f0dc7aeb8b4b0b95a085479b93ec148dffe8ef"

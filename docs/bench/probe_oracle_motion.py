"""What the observed frames can tell about the future, with the digits' appearance given.

For each digit, the integer positions it had in the last H observed frames are all a
predictor could know of its motion. Per axis this samples (position, velocity) pairs under
the generator's own rule (predict/data.py: 3.6-pixel steps, clamp-and-flip at the walls,
int(36 p)), keeps those that reproduce the H observed positions, and renders the digit's
true image at the hypotheses' future positions, combined by maximum as the generator does:

- hard: at each frame's most common position (a committed, perfectly sharp prediction);
- soft: the mean of up to 16 hypotheses' renders (what squared error rewards).

The error left is what no predictor reading H frames can remove, however well it draws
digits: a bound on the design, not a model. Training digits, seed 777 (never the test set).

    python docs/bench/probe_oracle_motion.py SEQUENCES H [H ...]     (e.g. 300 3 10)
"""
import sys

import numpy as np

from vidseg_cli.predict.data import CANVAS, DIGIT, STEP, _draw, load_digits, trajectory

RANGE = CANVAS - DIGIT
HYPOTHESES, KEPT = 40_000, 16


def simulate(p: np.ndarray, v: np.ndarray, frames: int) -> np.ndarray:
    """(frames, n) integer positions from positions p and velocities v at the first frame."""
    out = np.empty((frames,) + p.shape)
    out[0] = p
    for t in range(1, frames):
        p = p + v * STEP
        low, high = p <= 0, p >= 1
        p, v = np.where(low, 0.0, np.where(high, 1.0, p)), np.where(low | high, -v, v)
        out[t] = p
    return (out * RANGE).astype(np.int64)


def future_positions(seen: np.ndarray, future: int, rng: np.random.Generator) -> np.ndarray:
    """(future, m) positions of the m hypotheses consistent with ``seen`` (H,) on one axis."""
    p = (seen[0] + rng.random(HYPOTHESES)) / RANGE
    v = rng.uniform(-1, 1, HYPOTHESES)
    paths = simulate(p, v, len(seen) + future)
    return paths[len(seen):, (paths[: len(seen)] == seen[:, None]).all(0)]


def most_common(paths: np.ndarray) -> np.ndarray:
    return np.array([np.bincount(row - row.min()).argmax() + row.min() for row in paths])


def main() -> None:
    count, histories = int(sys.argv[1]), [int(h) for h in sys.argv[2:]]
    digits, _ = load_digits("../shared/data/mnist/mnist_5k.csv.gz")
    for history in histories:
        data, rng = np.random.default_rng(777), np.random.default_rng(1)
        hard, soft = np.zeros(10), np.zeros(10)
        for _ in range(count):
            truth, committed, blended = (np.zeros((20, CANVAS, CANVAS)) for _ in range(3))
            for _ in range(2):
                digit = digits[data.integers(len(digits))].astype(float) / 255
                path = trajectory(data)
                layer = np.zeros_like(truth)
                _draw(layer, digit, path)
                np.maximum(truth, layer, out=truth)
                axes = [future_positions(path[10 - history : 10, a], 10, rng) for a in range(2)]
                guess = path.copy()
                guess[10:] = np.stack([most_common(axis) for axis in axes], 1)
                layer = np.zeros_like(truth)
                _draw(layer, digit, guess)
                np.maximum(committed, layer, out=committed)
                kept, mean = min(KEPT, *(axis.shape[1] for axis in axes)), np.zeros_like(truth)
                for j in range(kept):
                    guess[10:] = np.stack([axis[:, j] for axis in axes], 1)
                    layer = np.zeros_like(truth)
                    _draw(layer, digit, guess)
                    mean += layer / kept
                np.maximum(blended, mean, out=blended)
            hard += ((truth - committed)[10:] ** 2).sum((1, 2))
            soft += ((truth - blended)[10:] ** 2).sum((1, 2))
        for name, error in (("hard", hard), ("soft", soft)):
            ahead = " ".join(f"{e:.1f}" for e in error / count)
            print(f"H={history} {name}: MSE/frame {error.sum() / count / 10:.1f}   +1..+10: {ahead}")


if __name__ == "__main__":
    main()

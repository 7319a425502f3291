"""Three consecutive frames of a clip labelled without and with the memory, and where each
frame's labels differ from the previous frame's moved by optical flow (the pixels the
consistency measure counts against it):

    python docs/bench/semseg_flicker.py ../shared/data/examples/driving.mp4 100 docs/semseg-flicker.jpg [MODEL [SLOTS]]

Rows: the single-frame network (--memory none), then the memory (fifo SLOTS, default 1).
Columns: frames START, START+1, START+2 as overlays, then the disagreement of START+2 in
red. MODEL defaults to semseg-camvid-train.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vidseg_cli.memory.bank import MemoryBank
from vidseg_cli.memory.policies import FIFO
from vidseg_cli.metrics.consistency import TemporalConsistency, opencv
from vidseg_cli.semseg.data import read_video
from vidseg_cli.semseg.job import class_table, label_frame
from vidseg_cli.semseg.model import create_semseg, processing_size


def labelled(images: list[np.ndarray], model: str, slots: int) -> list[np.ndarray]:
    network, _ = create_semseg(model)
    bank = MemoryBank(policy=FIFO(slots=slots)) if slots else None
    return [label_frame(network, bank, image, index, processing_size(model), "cpu") for index, image in enumerate(images)]


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return (0.45 * image + 0.55 * palette[labels]).astype(np.uint8)


def disagreement(images: list[np.ndarray], labels: list[np.ndarray]) -> tuple[np.ndarray, float]:
    cv2 = opencv()
    grey = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in images[-2:]]
    warped, valid = TemporalConsistency().warp(labels[-2], *grey)
    differs = (warped != labels[-1]) & valid
    picture = (images[-1] * 0.35).astype(np.uint8)
    picture[differs] = (255, 40, 40)
    return picture, 100 * float(differs.sum() / max(valid.sum(), 1))


def main() -> None:
    video, start, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    model = sys.argv[4] if len(sys.argv) > 4 else "semseg-camvid-train"
    slots = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    images = read_video(video)
    _, metadata = create_semseg(model)
    palette = np.zeros((256, 3), np.uint8)
    for entry in class_table(metadata):
        palette[entry["id"]] = entry["colour"]
    rows = []
    for memory in (0, slots):
        labels = labelled(images[: start + 3], model, memory)[start:]
        shown = images[start : start + 3]
        tiles = [overlay(image, label, palette) for image, label in zip(shown, labels, strict=True)]
        picture, share = disagreement(shown, labels)
        tiles.append(picture)
        row = Image.fromarray(np.concatenate(tiles, axis=1))
        ImageDraw.Draw(row).text((8, 8), f"{f'fifo {memory} (memory)' if memory else 'none'}: {share:.1f}% of pixels disagree with frame {start + 1}", fill=(255, 255, 255))
        rows.append(np.asarray(row))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid.thumbnail((1920, 1920))
    grid.save(out, quality=85)
    print(out)


if __name__ == "__main__":
    main()

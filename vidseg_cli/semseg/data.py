"""Labelled video for semantic segmentation: CamVid in the SegNet layout, and a generic one.

CamVid (SegNet layout, as in ``../shared/data/camvid``): ``{split}/<seq>_<number>.jpg`` with
``{split}annot/<seq>_<number>.png`` (numbers may carry an ``f``: ``0006R0_f00930``) holding class ids 0..10 and 11 for void. A sequence is
the name's prefix (``0001TP``, ``0006R0``, ``0016E5``, ``Seq05VD``) and its frames are
ordered by number; in this copy labelled frames are 30 video frames (about 1 s) apart.

Generic: ``images/<seq>/<frame>.{jpg,png}`` with ``labels/<seq>/<frame>.png`` (single-channel
class ids: CamVid's, or those of ``train semseg --classes FILE.json``; ``--void`` names the
id to ignore), frames ordered by name as numbers sort.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import natural_key, open_frames
from vidseg_cli.io.images import is_listed_image


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    colour: tuple[int, int, int]


# SegNet's CamVid classes and the colours CamVid's tools draw them in.
CAMVID_CLASSES = (
    ClassInfo(0, "sky", (128, 128, 128)),
    ClassInfo(1, "building", (128, 0, 0)),
    ClassInfo(2, "pole", (192, 192, 128)),
    ClassInfo(3, "road", (128, 64, 128)),
    ClassInfo(4, "pavement", (60, 40, 222)),
    ClassInfo(5, "tree", (128, 128, 0)),
    ClassInfo(6, "sign", (192, 128, 128)),
    ClassInfo(7, "fence", (64, 64, 128)),
    ClassInfo(8, "car", (64, 0, 128)),
    ClassInfo(9, "pedestrian", (64, 64, 0)),
    ClassInfo(10, "bicyclist", (0, 128, 192)),
)
CAMVID_VOID = 11


def class_list(path: Path | None) -> list[dict]:
    """[{id, name, colour}]: CamVid's (``path`` None) or a JSON file of that form, as
    ``vidseg semseg`` writes beside its labels (``classes.json``); ids must be 0..N-1."""
    if path is None:
        return [{"id": c.id, "name": c.name, "colour": list(c.colour)} for c in CAMVID_CLASSES]
    import json

    try:
        entries = json.loads(path.read_text())
        table = [{"id": int(e["id"]), "name": str(e["name"]), "colour": [int(v) for v in e["colour"]]} for e in entries]
    except OSError as error:
        raise VidsegError(f"cannot read --classes {path}: {error.strerror}") from None
    except (ValueError, TypeError, KeyError):
        raise VidsegError(f"--classes {path}: expected a JSON list of {{\"id\", \"name\", \"colour\": [r, g, b]}}") from None
    if not table or [e["id"] for e in table] != list(range(len(table))) or len(table) > 255:
        raise VidsegError(f"--classes {path}: ids must be 0, 1, 2, ... in order (at most 255 classes)")
    if any(len(e["colour"]) != 3 or not all(0 <= v <= 255 for v in e["colour"]) for e in table):
        raise VidsegError(f"--classes {path}: each colour is [r, g, b] in 0..255")
    return table


@dataclass(frozen=True)
class LabelledFrame:
    image: Path
    label: Path
    number: int  # position in its sequence's time (frame number, or order of the names)


@dataclass(frozen=True)
class LabelledSequence:
    name: str
    frames: tuple[LabelledFrame, ...]  # in time order


def load_camvid(root: Path, split: str) -> list[LabelledSequence]:
    """``root/split`` and ``root/splitannot``, grouped into sequences by name prefix."""
    images, labels = root / split, root / f"{split}annot"
    for folder in (images, labels):
        if not folder.is_dir():
            raise VidsegError(f"{folder}: not found (CamVid's SegNet layout has {split}/ and {split}annot/)")
    groups: dict[str, list[LabelledFrame]] = {}
    for image in sorted(p for p in images.iterdir() if is_listed_image(p)):
        prefix, _, suffix = image.stem.rpartition("_")
        number = re.fullmatch(r"[A-Za-z]*(\d+)", suffix)  # 006690, or f00930 in 0006R0 and Seq05VD
        if not prefix or number is None:
            raise VidsegError(f"{image.name}: CamVid names are <sequence>_<frame number>")
        label = labels / f"{image.stem}.png"
        if not label.is_file():
            raise VidsegError(f"{image.name} has no label {label}")
        groups.setdefault(prefix, []).append(LabelledFrame(image, label, int(number.group(1))))
    if not groups:
        raise VidsegError(f"{images}: no .jpg or .png frames")
    return [LabelledSequence(name, tuple(sorted(frames, key=lambda f: f.number))) for name, frames in sorted(groups.items())]


def load_generic(root: Path) -> list[LabelledSequence]:
    """``root/images/<seq>/`` with ``root/labels/<seq>/``, paired by file stem."""
    images, labels = root / "images", root / "labels"
    for folder in (images, labels):
        if not folder.is_dir():
            raise VidsegError(f"{folder}: not found (the generic layout has images/<seq>/ and labels/<seq>/)")
    sequences = []
    for folder in sorted((p for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key):
        files = sorted((p for p in folder.iterdir() if is_listed_image(p)), key=natural_key)
        frames = []
        for number, image in enumerate(files):
            label = labels / folder.name / f"{image.stem}.png"
            if not label.is_file():
                raise VidsegError(f"{folder.name}/{image.name} has no label {label}")
            frames.append(LabelledFrame(image, label, number))
        if frames:
            sequences.append(LabelledSequence(folder.name, tuple(frames)))
    if not sequences:
        raise VidsegError(f"{images}: no sequence folders with frames")
    return sequences


def load_labelled(root: Path, split: str = "train") -> list[LabelledSequence]:
    """Either layout: CamVid's when ``root/split`` exists, else the generic one."""
    if (root / split).is_dir():
        return load_camvid(root, split)
    return load_generic(root)


def load_splits(root: Path, splits: list[str]) -> list[LabelledSequence]:
    """Several CamVid splits as one set (``train,val``: the usual final training set once
    settings are chosen on val). A sequence named in several splits becomes one, its frames
    in time order, so that a frame's memory may come from either split. One split reads
    either layout (``load_labelled``); several exist only in CamVid's."""
    if len(splits) == 1:
        return load_labelled(root, splits[0])
    merged: dict[str, list[LabelledFrame]] = {}
    for split in splits:
        for sequence in load_camvid(root, split):
            merged.setdefault(sequence.name, []).extend(sequence.frames)
    return [LabelledSequence(name, tuple(sorted(frames, key=lambda f: f.number))) for name, frames in sorted(merged.items())]


def read_label(path: Path, classes: int, void: int) -> np.ndarray:
    """(H, W) uint8 class ids; any id that is neither a class nor void is an error."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P"):
                raise VidsegError(f"{path}: a label map is one channel of class ids, not {image.mode}")
            label = np.asarray(image, dtype=np.uint8)
    except OSError as error:
        raise VidsegError(f"cannot read label {path}: {error}") from None
    bad = (label >= classes) & (label != void)
    if bad.any():
        raise VidsegError(f"{path}: class id {int(label[bad][0])} is neither 0..{classes - 1} nor void ({void})")
    return label


def unlabelled_videos(root: Path) -> list[Path]:
    """The videos under ``root``: a video file or frame folder itself, or the frame folders
    (DAVIS's JPEGImages/<seq>/ or <seq>/) and video files in it."""
    if root.is_file() or (root.is_dir() and any(is_listed_image(p) for p in root.iterdir())):
        return [root]
    if not root.is_dir():
        raise VidsegError(f"{root}: no such video or folder")
    base = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root
    entries = sorted((p for p in base.iterdir() if not p.name.startswith(".")), key=natural_key)
    videos = [p for p in entries if p.is_dir() or not is_listed_image(p)]
    if not videos:
        raise VidsegError(f"{root}: no videos or frame folders")
    return videos


def read_video(path: Path) -> list[np.ndarray]:
    """Every frame of a video file or frame folder, (H, W, 3) uint8 RGB."""
    source = open_frames(path)
    try:
        return [frame.image for frame in source]
    finally:
        source.close()

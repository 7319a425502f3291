"""Round trips through real files: masks in, labels out, timestamps kept."""

from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import Frame, natural_key, open_frames
from vidseg_cli.io.masks import MaskReader, parse_mask_args
from vidseg_cli.io.palette import davis_palette
from vidseg_cli.io.sink import Prediction
from vidseg_cli.io.sinks import save_palette_png
from vidseg_cli.io.video_sinks import LabelVideoSink, OverlaySink


def labels_image(h: int = 31, w: int = 45) -> np.ndarray:
    labels = np.zeros((h, w), np.uint8)
    labels[2:10, 3:20] = 1
    labels[12:30, 25:44] = 4
    labels[0, 0] = 255
    return labels


def test_palette_png_round_trip(tmp_path):
    labels = labels_image()
    save_palette_png(labels, tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "P"
        assert np.array_equal(np.asarray(image), labels)
        assert image.getpalette()[:6] == [0, 0, 0, 128, 0, 0]  # DAVIS: 1 is dark red
    assert np.array_equal(MaskReader(labels.shape).read(tmp_path / "m.png"), labels)


def test_greyscale_masks(tmp_path):
    binary = np.where(labels_image() > 0, 255, 0).astype(np.uint8)
    Image.fromarray(binary, "L").save(tmp_path / "b.png")
    assert set(np.unique(MaskReader(binary.shape).read(tmp_path / "b.png"))) == {0, 1}
    ids = labels_image()
    Image.fromarray(ids, "L").save(tmp_path / "ids.png")
    assert np.array_equal(MaskReader(ids.shape).read(tmp_path / "ids.png"), ids)
    Image.fromarray(binary, "L").convert("LA").save(tmp_path / "la.png")  # DAVIS has one of these
    assert set(np.unique(MaskReader(binary.shape).read(tmp_path / "la.png"))) == {0, 1}


def test_rgb_masks_map_palette_colours_and_keep_other_colours_stable(tmp_path):
    labels = labels_image()
    davis_rgb = davis_palette()[labels]
    Image.fromarray(davis_rgb).save(tmp_path / "davis.png")
    reader = MaskReader(labels.shape)
    assert np.array_equal(reader.read(tmp_path / "davis.png"), labels)
    custom = np.zeros(labels.shape + (3,), np.uint8)
    custom[labels == 1] = (10, 200, 30)
    custom[labels == 4] = (250, 250, 0)
    Image.fromarray(custom).save(tmp_path / "a.png")
    first = MaskReader(labels.shape)
    ids_a = first.read(tmp_path / "a.png")
    assert len(np.unique(ids_a)) == 3 and (ids_a[labels == 0] == 0).all()
    Image.fromarray(custom[::-1].copy()).save(tmp_path / "b.png")
    ids_b = first.read(tmp_path / "b.png")
    assert ids_b[::-1][labels == 1][0] == ids_a[labels == 1][0]  # same colour, same id


def test_mask_arguments(tmp_path):
    for name in ("00000.png", "00005.png", "00013.png"):
        save_palette_png(labels_image(), tmp_path / name)
    folder = [(m.frame, m.path.name) for m in parse_mask_args([str(tmp_path)])]
    assert folder == [(0, "00000.png"), (5, "00005.png"), (13, "00013.png")]
    single = tmp_path / "00005.png"
    assert [(m.frame) for m in parse_mask_args([str(single), f"7:{single}"])] == [0, 7]
    with pytest.raises(VidsegError, match="two masks given for frame 5"):
        parse_mask_args([str(tmp_path), f"5:{single}"])


def test_natural_sort_of_frame_folders(frame_folder):
    folder, _ = frame_folder
    names = [p.name for p in sorted(folder.iterdir(), key=natural_key)]
    assert names[:3] == ["frame0.png", "frame1.png", "frame2.png"] and names[-1] == "frame7.png"
    source = open_frames(folder)
    assert source.size == (67, 91) and source.count == 8
    assert [f.index for f in source] == list(range(8))


def _frames(n: int, pts: list[int], tb: Fraction, h: int = 31, w: int = 45):
    rng = np.random.default_rng(0)
    for i in range(n):
        yield Frame(i, rng.integers(0, 255, (h, w, 3), dtype=np.uint8), pts[i], tb)


def test_label_video_decodes_to_exact_ids_with_variable_frame_rate(tmp_path):
    tb = Fraction(1, 1000)
    pts = [0, 40, 70, 200, 210, 480]
    sink = LabelVideoSink(tmp_path, tb)
    written = []
    for frame in _frames(len(pts), pts, tb):
        labels = np.roll(labels_image(), frame.index * 3, axis=1)
        written.append(labels)
        sink.write(frame, Prediction(labels))
    sink.close()
    with av.open(str(tmp_path / "labels.mkv")) as container:
        decoded = [(f.pts, f.to_ndarray(format="gray")) for f in container.decode(video=0)]
    assert [p for p, _ in decoded] == pts
    for (_, got), want in zip(decoded, written, strict=True):
        assert np.array_equal(got, want)


def test_overlay_of_odd_sized_video_keeps_timestamps(tmp_path):
    tb = Fraction(1, 90000)
    pts = [0, 3000, 9000, 9900, 30000]
    sink = OverlaySink(tmp_path, tb)
    for frame in _frames(len(pts), pts, tb):
        sink.write(frame, Prediction(labels_image()))
    sink.close()
    with av.open(str(tmp_path / "overlay.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (46, 32)  # padded to even
        times = [float(f.time) for f in container.decode(stream)]
    assert times == pytest.approx([p / 90000 for p in pts], abs=1e-3)


@pytest.mark.slow
def test_segment_variable_frame_rate_video_to_label_video(vidseg, tmp_path, write_mask):
    """End to end: a VFR input's timestamps reach the label video unchanged."""
    tb = Fraction(1, 1000)
    pts = [0, 33, 66, 150, 160, 400, 433]
    clip = tmp_path / "vfr.mkv"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("ffv1")
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = stream.codec_context.time_base = tb
        for frame in _frames(len(pts), pts, tb, 48, 64):
            video_frame = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
            video_frame.pts, video_frame.time_base = frame.pts, tb
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 10:30] = 3
    out = tmp_path / "out"
    run = vidseg("segment", clip, "--mask", write_mask(mask), "--out", out, "--format", "video", "--size", "48")
    assert run.code == 0, run.stderr
    with av.open(str(out / "labels.mkv")) as container:
        decoded = [(f.pts, f.to_ndarray(format="gray")) for f in container.decode(video=0)]
    assert [p for p, _ in decoded] == pts
    assert np.array_equal(decoded[0][1], mask)
    assert set(np.unique(decoded[-1][1])) <= {0, 3}


def _rotate_mp4(data: bytes) -> bytes:
    """Write a 90-degree display matrix into the mp4's track header (tkhd).

    tkhd v0: size, 'tkhd', version/flags (4), times (8), track id (4), reserved (4),
    duration (4), reserved (8), layer/group/volume/reserved (8), then the 3x3 matrix
    in 16.16 fixed point: a b u / c d v / x y w.
    """
    at = data.find(b"tkhd")
    assert at > 0 and data[at + 4] == 0, "expected a version-0 track header"
    matrix_at = at + 4 + 4 + 8 + 4 + 4 + 4 + 8 + 8
    one, minus_one = (1 << 16).to_bytes(4, "big"), ((-1 << 16) & 0xFFFFFFFF).to_bytes(4, "big")
    zero, w = bytes(4), (1 << 30).to_bytes(4, "big")
    matrix = zero + one + zero + minus_one + zero + zero + zero + zero + w
    return data[:matrix_at] + matrix + data[matrix_at + 36 :]


@pytest.mark.slow
def test_rotation_metadata_is_applied_end_to_end(vidseg, tmp_path, write_mask):
    clip = tmp_path / "flat.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        image = np.zeros((32, 64, 3), np.uint8)
        image[:, :16] = 255  # a white band on the left of the stored frame
        for _ in range(4):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    rotated = tmp_path / "rotated.mp4"
    rotated.write_bytes(_rotate_mp4(clip.read_bytes()))
    source = open_frames(rotated)
    first = next(iter(source))
    source.close()
    assert first.image.shape == (64, 32, 3)  # upright: portrait
    white = first.image.mean(axis=(1, 2)) > 128
    # this matrix is a phone's "rotate=90" (FFmpeg reports -90): shown turned clockwise,
    # so the stored left band is on top
    assert white[:16].all() and not white[-16:].any()
    mask = np.zeros((64, 32), np.uint8)
    mask[20:40, 8:24] = 1
    out = tmp_path / "out"
    run = vidseg("segment", rotated, "--mask", write_mask(mask), "--out", out, "--size", "32")
    assert run.code == 0, run.stderr
    assert np.asarray(Image.open(out / "00003.png")).shape == (64, 32)

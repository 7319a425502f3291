"""The learned VOS model and `vidseg train vos`: shapes, fusion, determinism, resume, loading."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from vidseg_cli.engine.job import make_bank
from vidseg_cli.memory.fusion_cell import FusionCell, LearnedFusion, fam
from vidseg_cli.memory.readout import attend
from vidseg_cli.memory.slot import Slot
from vidseg_cli.models.registry import backbone
from vidseg_cli.options import MemoryOptions
from vidseg_cli.synthetic import frames, write_davis
from vidseg_cli.train.losses import bootstrapped_nll
from vidseg_cli.vos.clips import MAX_OBJECTS, Clip, ClipSampler
from vidseg_cli.vos.memnet import MemNetConfig, MemoryNetwork
from vidseg_cli.vos.models import create_vos_model
from vidseg_cli.vos.session import VOSSession
from vidseg_cli.vos.train import TrainConfig, Trainer, clip_loss, make_generator
from vidseg_cli.weights.registry import file_sha256

TINY = MemNetConfig(key_dim=16, value_dim=16, mask_dim=8, decoder_dims=(16, 8, 8), fusion_hidden=8, topk=4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_davis(tmp_path_factory.mktemp("davis"), sequences=2, length=8, height=64, width=96)


def test_attend_reads_each_object_from_slots_that_knew_it():
    query = torch.zeros(1, 2, 1)
    query[0, 0, 0] = 1.0
    keys = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])  # two memory pixels, identical keys
    values = torch.tensor([[[[2.0, 8.0]], [[0.0, 5.0]]]])  # (B=1, O=2, D=1, M=2)
    known = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])  # object 2 unknown to the first pixel
    out = attend(query, keys, values, known, topk=0)
    assert out[0, 0, 0, 0].item() == pytest.approx(5.0)  # mean of 2 and 8
    assert out[0, 1, 0, 0].item() == pytest.approx(5.0)  # only the pixel that knew it


def test_attend_top_k_equals_full_softmax_when_k_covers_memory():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 8, 30), torch.randn(2, 8, 50), torch.randn(2, 3, 4, 50)
    assert torch.allclose(attend(q, k, v, None, topk=50), attend(q, k, v, None, topk=0), atol=1e-5)
    assert not torch.allclose(attend(q, k, v, None, topk=3), attend(q, k, v, None, topk=0), atol=1e-3)


def test_fusion_cell_keeps_shapes_and_other_objects():
    torch.manual_seed(0)
    cell = FusionCell(key_dim=4, value_dim=3, hidden=5)
    source = Slot(key=torch.randn(4, 5, 6), value=torch.randn(1, 3, 5, 6), frame=1)
    target = Slot(key=torch.randn(4, 5, 6), value=torch.randn(2, 3, 5, 6), frame=2)
    fused = LearnedFusion(cell)(source, target)
    assert fused.key.shape == target.key.shape and fused.value.shape == target.value.shape
    assert torch.equal(fused.value[1], target.value[1])  # the source never knew object 2
    assert not torch.allclose(fused.value[0], target.value[0])


def test_aligned_fusion_candidate_starts_as_a_gated_blend_with_the_aligned_source():
    torch.manual_seed(0)
    cell = FusionCell(key_dim=4, value_dim=3, hidden=5, candidate="aligned")
    source, target = torch.randn(1, 7, 5, 6) * 10, torch.randn(1, 7, 5, 6) * 10
    scale = cell.log_scale.exp()
    r = torch.sigmoid(cell.filter(torch.cat([source, fam(source, target, 4, scale)], 1)))
    aligned = fam(target, r * source, 4, scale)
    z = torch.sigmoid(cell.gate(cell.trunk(torch.cat([aligned, target], 1))))
    assert torch.allclose(cell(source, target), (1 - z) * target + z * aligned, atol=1e-5)
    assert 0.05 < z.mean().item() < 0.3  # a gentle start
    with pytest.raises(ValueError, match="unknown fusion candidate"):
        FusionCell(key_dim=4, value_dim=3, candidate="gru")

    torch.nn.init.normal_(cell.candidate.weight)  # a trained correction
    blend = (1 - z) * target + z * aligned
    assert not torch.allclose(cell(source, target)[:, :4], blend[:, :4], atol=1e-3)  # reaches the keys
    values_only = FusionCell(key_dim=4, value_dim=3, hidden=5, candidate="aligned-values")
    values_only.load_state_dict(cell.state_dict())  # the same tensors, used differently
    fused = values_only(source, target)
    assert torch.allclose(fused[:, :4], blend[:, :4], atol=1e-5)
    assert not torch.allclose(fused[:, 4:], blend[:, 4:], atol=1e-3)


def test_memnet_runs_in_a_session_and_fuses_when_memory_is_full():
    torch.manual_seed(0)
    model = MemoryNetwork(backbone(), TINY).eval()
    session = VOSSession(model, make_bank(MemoryOptions(slots=3, update="A"), model.fusion()), 64, torch.device("cpu"))
    for index, (image, truth) in enumerate(frames(8, 64, 80, objects=2, seed=4)):
        step = session.step(image, truth if index == 0 else None)
        assert step.labels.shape == (64, 80)
    assert step.slots == 3 and max(slot.fused for slot in session.bank.slots) > 0
    assert session.bank.slots[-1].value.shape == (2, TINY.value_dim, 4, 5)  # stride 16 of 64x80


def test_bootstrapped_nll_keeps_the_hardest_pixels():
    probs = torch.tensor([[[0.9, 0.5, 0.1, 0.99]], [[0.1, 0.5, 0.9, 0.01]]])  # (2, 1, 4)
    labels = torch.zeros(1, 4, dtype=torch.long)
    full = bootstrapped_nll(probs, labels, 1.0)
    hardest = bootstrapped_nll(probs, labels, 0.25)
    assert full.item() == pytest.approx(-np.log([0.9, 0.5, 0.1, 0.99]).mean(), rel=1e-5)
    assert hardest.item() == pytest.approx(-np.log(0.1), rel=1e-5)


def test_clip_sampler_draws_the_same_clips_under_a_seed(dataset):
    a = ClipSampler(dataset, 4, (48, 64), np.random.default_rng(3))
    b = ClipSampler(dataset, 4, (48, 64), np.random.default_rng(3))
    for still in (False, True):
        clip_a, clip_b = a.sample(3, still), b.sample(3, still)
        assert clip_a.images.shape == (4, 3, 48, 64) and clip_a.masks.shape == (4, 48, 64)
        assert torch.equal(clip_a.images, clip_b.images) and torch.equal(clip_a.masks, clip_b.masks)
        assert clip_a.masks[0].sum() > 0 and set(clip_a.masks.unique().tolist()) <= {0, 1}


def test_multi_object_clips_keep_dataset_ids_and_paste_moving_objects(dataset, tmp_path):
    """Palette ids are objects; pasted objects get the next ids, move, and are all on frame 0."""
    backgrounds = tmp_path / "scenes"
    backgrounds.mkdir()
    image, _ = next(iter(frames(1, 80, 120, objects=0, seed=9)))
    Image.fromarray(image).save(backgrounds / "street.jpg")
    sampler = ClipSampler(dataset, 5, (64, 96), np.random.default_rng(1), multi_object=True, backgrounds=backgrounds)
    seen, moved = set(), False
    for _ in range(12):
        for clip in (sampler.sample(3, False, extra=2), sampler.sample(3, True, extra=1), sampler.sample(3, False, extra=1, scene=True)):
            ids = clip.masks.unique().tolist()
            assert ids == list(range(len(ids))) and len(ids) - 1 <= MAX_OBJECTS  # numbered 1..O, background 0
            assert set(clip.masks[0].unique().tolist()) == set(ids)  # every object is on the prompt frame
            seen.add(len(ids) - 1)
            moved |= not torch.equal(clip.masks[0] == len(ids) - 1, clip.masks[-1] == len(ids) - 1)
    assert max(seen) >= 3 and moved
    assert set(ClipSampler(dataset, 5, (64, 96), np.random.default_rng(1)).sample(3, False, extra=2).masks.unique().tolist()) == {0, 1}


def test_static_still_clips_repeat_one_frame_and_its_mask(dataset):
    clip = ClipSampler(dataset, 5, (48, 64), np.random.default_rng(2), multi_object=True).sample(3, True, static=True)
    assert all(torch.equal(clip.masks[t], clip.masks[0]) for t in range(5))
    flat = clip.images - clip.images.mean(dim=(1, 2, 3), keepdim=True)  # the per-frame jitter shifts brightness
    assert (flat[1:] - flat[:1]).abs().mean() < 0.1 * flat.abs().mean()


def test_a_region_of_the_background_becomes_one_more_object(dataset):
    """Region objects: a blob of background pixels, labelled next, that moves with the frame."""
    plain = ClipSampler(dataset, 4, (48, 64), np.random.default_rng(4), multi_object=True)
    regional = ClipSampler(dataset, 4, (48, 64), np.random.default_rng(4), multi_object=True)
    for _ in range(6):
        without, with_region = plain.sample(3, True, static=True), regional.sample(3, True, static=True, region=True)
        if with_region.masks.max() > without.masks.max():
            break
    else:
        pytest.fail("no region object in six draws")
    region = with_region.masks[0] == with_region.masks.max()
    assert region.sum() > 0 and all(torch.equal(m == with_region.masks.max(), region) for m in with_region.masks)


def test_clip_loss_trains_several_objects_together(dataset):
    model = MemoryNetwork(backbone(), TINY)
    masks = torch.zeros(4, 48, 64, dtype=torch.int64)
    masks[:, 5:20, 5:25], masks[:, 25:45, 30:60] = 1, 2
    clip = Clip(torch.rand(4, 3, 48, 64) * 255, masks)
    loss = clip_loss(model, clip, 2, "C", 1.0)
    loss.backward()
    assert loss.item() > 0 and model.heads.decoder.out.weight.grad.abs().sum() > 0


def _trainer(dataset, run_dir, steps=4, clip_length=4, slots=2, **options):
    config = TrainConfig(steps=steps, clip_length=clip_length, slots=slots, crop=(48, 64), warmup=1, seed=5, model=TINY,
                         **options)
    rng = make_generator(config.seed)
    model = MemoryNetwork(backbone(), TINY)
    return Trainer(model, ClipSampler(dataset, clip_length, (48, 64), rng), config, run_dir, torch.device("cpu"))


def test_resumed_training_equals_uninterrupted_training(dataset, tmp_path):
    straight = _trainer(dataset, tmp_path)
    losses = [straight.train_step() for _ in range(4)]
    first = _trainer(dataset, tmp_path)
    first.train_step(), first.train_step()
    first.save_checkpoint()
    resumed = _trainer(dataset, tmp_path)
    resumed.load_checkpoint()
    assert [resumed.train_step(), resumed.train_step()] == losses[2:]
    for name, tensor in straight.model.heads.state_dict().items():
        assert torch.equal(tensor, resumed.model.heads.state_dict()[name]), name


def test_training_reduces_the_loss_on_one_clip(dataset, tmp_path):
    """The heads can fit: repeated steps on the same clip must drive its loss down."""
    trainer = _trainer(dataset, tmp_path, steps=40, top_p=(1.0, 1.0), lr=2e-3)
    clip = trainer.sampler.sample(2, still=False)
    trainer.sampler.sample = lambda *args: clip
    losses = [trainer.train_step() for _ in range(40)]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


@pytest.mark.slow
def test_train_command_writes_a_model_that_segment_loads(vidseg, dataset, tmp_path, clip):
    run = tmp_path / "run"
    args = ("train", "vos", "--data", dataset, "--out", run, "--steps", "2", "--crop", "48x64", "--clip-length", "4",
            "--slots", "2", "--val", dataset, "--val-every", "2", "--val-size", "48", "--device", "cpu",
            "--max-gap", "2,3", "--top-p", "1,0.5", "--fusion-candidate", "aligned")
    result = vidseg(*args)
    assert result.code == 0, result.stderr
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["max_gap"] == [2, 3] and recorded["top_p"] == [1.0, 0.5]
    assert recorded["model"]["fusion_candidate"] == "aligned"
    assert vidseg(*args, "--force", "--max-gap", "3").code == 2  # START,END
    model_file = run / "model.safetensors"
    assert result.stdout.strip() == str(model_file) and "validation: J&F" in result.stderr
    with safe_open(str(model_file), framework="pt") as handle:
        assert handle.metadata()["arch"] == "memnet"
        assert json.loads(handle.metadata()["config"])["key_dim"] == 64
    assert vidseg(*args).code == 2  # the run folder is not empty: needs --resume or --force
    assert isinstance(create_vos_model(str(model_file)), MemoryNetwork)
    out = tmp_path / "masks"
    segment = vidseg("segment", clip[0], "--mask", clip[1], "--model", model_file, "--out", out, "--size", "64")
    assert segment.code == 0, segment.stderr
    assert len(list(out.glob("*.png"))) == 12


def test_train_init_goes_on_from_a_model_file_with_its_architecture(vidseg, dataset, tmp_path):
    first = tmp_path / "first"
    first.mkdir()
    trainer = _trainer(dataset, first, finetune_blocks=1)
    trainer.train_step()
    start = trainer.save_model()
    common = ("train", "vos", "--data", dataset, "--steps", "1", "--crop", "48x64", "--clip-length", "3",
              "--slots", "1", "--device", "cpu", "--finetune-blocks", "1", "--init", start)
    run = tmp_path / "second"
    result = vidseg(*common, "--out", run, "--still-share", "0.2,0.2")
    assert result.code == 0, result.stderr
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["init"] == file_sha256(start) and recorded["still_share"] == [0.2, 0.2]
    assert recorded["model"] == json.loads(trainer.model.config.to_json())
    went_on = create_vos_model(str(run / "model.safetensors"))
    assert went_on.tuned_blocks == {10}
    changed = [not torch.equal(v, trainer.model.heads.state_dict()[k]) for k, v in went_on.heads.state_dict().items()]
    assert any(changed)  # one step moved the heads it started from
    switched = vidseg(*common, "--out", tmp_path / "third", "--fusion-candidate", "aligned-values", "--update", "C")
    assert switched.code == 0, switched.stderr  # the same tensors, used differently
    recorded = json.loads((tmp_path / "third" / "config.json").read_text())
    assert recorded["model"]["fusion_candidate"] == "aligned-values" and recorded["rules"] == "C"
    assert vidseg(*common, "--out", tmp_path / "bad-rule", "--update", "CE").code == 2
    assert vidseg(*common[:-1], tmp_path / "missing.safetensors", "--out", tmp_path / "fourth").code == 2


def test_fusion_stage_trains_the_fusion_cell_alone_with_the_distillation_loss(dataset, tmp_path):
    trainer = _trainer(dataset, tmp_path, clip_length=6, slots=3, train="fusion", fusion_distill=1.0)
    before = {k: v.clone() for k, v in trainer.model.heads.state_dict().items()}
    trainer.train_step(), trainer.train_step()
    after = trainer.model.heads.state_dict()
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"fusion"}


def test_fusion_loss_reaches_the_fusion_cell_only_when_the_bank_fuses(dataset, tmp_path):
    trainer = _trainer(dataset, tmp_path)
    clip = ClipSampler(dataset, 6, (48, 64), np.random.default_rng(0)).sample(1, still=False)
    cell = trainer.model.heads.fusion

    def fusion_grad(slots: int, distill: float) -> float:
        trainer.model.zero_grad(set_to_none=False)
        clip_loss(trainer.model, clip, slots, "A", 1.0, distill).backward()
        return sum(p.grad.abs().sum().item() for p in cell.parameters() if p.grad is not None)

    assert fusion_grad(6, 1.0) == 0  # 6 slots hold all 6 frames: nothing fused, no fusion loss
    with_loss, without = fusion_grad(3, 1.0), fusion_grad(3, 0.0)  # frame 4 reads a fused slot
    assert with_loss > 0 and with_loss != without


def test_segment_refuses_a_file_that_is_not_a_model(vidseg, tmp_path, clip):
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"not safetensors")
    run = vidseg("segment", clip[0], "--mask", clip[1], "--model", bogus, "--out", tmp_path / "o")
    assert run.code == 2 and "safetensors" in run.stderr


def test_finetuned_backbone_blocks_train_save_and_load(dataset, tmp_path):
    trainer = _trainer(dataset, tmp_path, finetune_blocks=1)
    shared = backbone()._blocks[-1].state_dict()
    before = {k: v.clone() for k, v in trainer.model.backbone._blocks[-1].state_dict().items()}
    trainer.train_step(), trainer.train_step()
    after = trainer.model.backbone._blocks[-1].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(shared[k], before[k]) for k in before)  # the shared backbone is untouched
    path = trainer.save_model()
    loaded = create_vos_model(str(path))
    image = torch.rand(3, 48, 64) * 255
    trainer.model.eval()
    assert torch.equal(loaded.encode(image).key, trainer.model.encode(image).key)
    assert backbone() is not loaded.backbone


def test_ema_saves_the_average_trains_the_raw_weights_and_resumes_exactly(dataset, tmp_path):
    backbone()  # built once per process, drawing from torch's generator: before both runs seed it
    plain = _trainer(dataset, tmp_path / "plain", finetune_blocks=1)
    losses = [plain.train_step() for _ in range(3)]
    averaged = _trainer(dataset, tmp_path / "ema", finetune_blocks=1, ema=0.9)  # seeds torch again, as each run does
    assert [averaged.train_step() for _ in range(3)] == losses  # the average does not steer training
    raw = {name: t.clone() for name, t in averaged._learned().items()}
    path = averaged.save_model()
    assert all(torch.equal(t, raw[name]) for name, t in averaged._learned().items())  # put back after saving
    saved = create_vos_model(str(path))
    saved_state = {f"heads.{n}": t for n, t in saved.heads.state_dict().items()} | saved.finetuned_state()
    assert all(torch.equal(saved_state[name], averaged.average[name]) for name in raw)
    assert any(not torch.equal(saved_state[name], raw[name]) for name in raw)  # the average, not the raw weights
    averaged.save_checkpoint()
    resumed = _trainer(dataset, tmp_path / "ema", finetune_blocks=1, ema=0.9)
    resumed.load_checkpoint()
    averaged.train_step(), resumed.train_step()
    assert all(torch.equal(averaged.average[name], resumed.average[name]) for name in raw)


def test_training_free_fusion_also_fuses_learned_feature_values():
    from vidseg_cli.memory.fusion import TrainingFreeFusion

    torch.manual_seed(0)
    source = Slot(key=torch.randn(4, 6, 7), value=torch.randn(1, 3, 6, 7), frame=1)
    target = Slot(key=torch.randn(4, 6, 7), value=torch.randn(2, 3, 6, 7), frame=2)
    fused = TrainingFreeFusion()(source, target)
    assert fused.value.shape == target.value.shape and torch.equal(fused.value[1], target.value[1])


def test_calibrate_picks_a_bias_and_top_k_by_j_and_f_and_keeps_the_tuned_blocks(vidseg, dataset, tmp_path):
    (tmp_path / "run").mkdir()
    trainer = _trainer(dataset, tmp_path / "run", finetune_blocks=1)
    trainer.train_step()
    path = trainer.save_model()
    out = tmp_path / "calibrated.safetensors"
    run = vidseg("train", "calibrate", "--model", path, "--data", dataset, "--out", out, "--bias", "0,-30",
                 "--topk", "4,20", "--fusion-candidate", "aligned-values", "--size", "48")
    assert run.code == 0, run.stderr
    assert "topk 4, bias -30" in run.stderr and run.stdout.strip() == str(out)
    with safe_open(str(out), framework="pt") as handle:
        config = json.loads(handle.metadata()["config"])
        scores = json.loads(handle.metadata()["calibration"])
        names = set(handle.keys())
    assert config["logit_bias"] == 0.0  # -30 erases every object: J&F can only be worse
    chosen = scores[f"topk {config['topk']}, bias 0"]["J&F"]
    assert len(scores) == 4 and chosen == max(score["J&F"] for score in scores.values())
    assert config["fusion_candidate"] == "aligned-values"
    with safe_open(str(path), framework="pt") as handle:
        assert names == set(handle.keys())  # the fine-tuned blocks travel with the heads
    assert vidseg("train", "calibrate", "--model", path, "--data", dataset, "--out", out).code == 2  # exists


def test_every_validated_model_is_kept_and_the_best_is_named(dataset, tmp_path):
    from safetensors import safe_open as open_safetensors

    from vidseg_cli.vos.train import run_training

    trainer = _trainer(dataset, tmp_path, steps=4)
    scores = iter([{"J&F": 0.5}, {"J&F": 0.7}, {"J&F": 0.6}, {"J&F": 0.4}])
    run_training(trainer, lambda line: None, lambda: next(scores), validate_every=1, checkpoint_every=4)
    kept = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert kept == ["model-best.safetensors"] + [f"model-step{n}.safetensors" for n in range(1, 5)]
    with open_safetensors(str(tmp_path / "model-best.safetensors"), framework="pt") as handle:
        assert handle.metadata()["steps"] == "2"  # the 0.7 one


@pytest.mark.parametrize(("signal_", "code", "word"), [("ctrl-c", 130, "interrupted"), ("sigterm", 143, "terminated")])
def test_ctrl_c_saves_a_checkpoint_that_resume_goes_on_from(vidseg, dataset, tmp_path, monkeypatch, signal_, code, word):
    from vidseg_cli.cli.train import vos as train_cli
    from vidseg_cli.signals import Terminated

    def one_step_then_ctrl_c(trainer, log, *args, **kwargs):
        trainer.train_step()
        raise Terminated if signal_ == "sigterm" else KeyboardInterrupt

    run = tmp_path / "run"
    args = ("train", "vos", "--data", dataset, "--out", run, "--steps", "2", "--crop", "48x64", "--clip-length", "3",
            "--slots", "1", "--device", "cpu")
    with monkeypatch.context() as patch:
        patch.setattr(train_cli, "run_training", one_step_then_ctrl_c)
        interrupted = vidseg(*args)
    assert interrupted.code == code
    assert f"{word} at step 1; checkpoint saved" in interrupted.stderr
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 1
    resumed = vidseg(*args, "--resume")
    assert resumed.code == 0, resumed.stderr
    assert "from step 1" in resumed.stderr and (run / "model.safetensors").is_file()

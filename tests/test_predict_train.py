"""The STReMN predictor on the shared memory engine, its losses and `vidseg train predict`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from vidseg_cli.engine.job import make_bank
from vidseg_cli.memory.bank import MemoryBank
from vidseg_cli.options import MemoryOptions
from vidseg_cli.predict.clips import MovingMnist
from vidseg_cli.predict.model import ARCH, Predictor, PredictorConfig
from vidseg_cli.predict.motion import shift_patches, shift_pixels
from vidseg_cli.predict.train import PredictTrainConfig, PredictTrainer, load_trained, scale_invariant_gradient, shrinkage

TINY = PredictorConfig(width=8, blocks=1, key_dim=8, value_dim=8, fusion_hidden=8)


def test_losses():
    truth = torch.zeros(4, 1, 32, 32)
    truth[:, :, 8:16, 8:16] = 1
    assert shrinkage(torch.zeros(10)) == 0
    assert shrinkage(torch.full((10,), 0.5)) > 10 * shrinkage(torch.full((10,), 0.05))  # hard pixels weigh more
    assert scale_invariant_gradient(truth, truth) == 0
    assert scale_invariant_gradient(torch.roll(truth, 3, dims=-1), truth) > 0.1


def test_an_untrained_predictor_copies_the_last_frame_and_fills_the_shared_bank():
    torch.manual_seed(0)
    model = Predictor(TINY).eval()
    frames = torch.rand(10, 1, 64, 64)
    bank = make_bank(MemoryOptions("stremn", 5, "C"), model.fusion())
    with torch.no_grad():
        predicted = model.rollout(frames[None], 10, [bank])[0]
    assert predicted.shape == (17, 1, 64, 64)
    last = frames[-1].clamp(1e-3, 1 - 1e-3)
    assert torch.allclose(predicted[7:], last.expand(10, -1, -1, -1), atol=1e-5)  # fed back: still the last frame
    assert isinstance(bank, MemoryBank) and len(bank.slots) == 5
    assert any(slot.fused for slot in bank.slots)  # stremn distilled dropped slots with the learned cell


def test_the_shift_head_moves_each_patch_by_its_chosen_shift():
    model = Predictor(PredictorConfig(width=8, blocks=1, shift_radius=2)).eval()
    frame = torch.zeros(1, 1, 16, 16)
    frame[0, 0, 4:8, 4:8] = 1  # a square in patch (1, 1)
    scores = torch.full((1, 25, 4, 4), -1e4)
    scores[0, 2 * 5 + 2] = 1e4  # every patch: no shift ...
    scores[0, :, 1, 1] = -1e4
    scores[0, 0 * 5 + 3, 1, 1] = 1e4  # ... except patch (1, 1): take the pixel 2 rows up and 1 column right
    moved = shift_patches(frame, scores, 2, 4)
    expected = torch.zeros_like(frame)
    expected[0, 0, 6:8, 4:7] = 1  # the square moved 2 down and 1 left, inside its own patch only
    torch.testing.assert_close(moved, expected)
    frame, scores = torch.rand(2, 3, 16, 24), torch.randn(2, 49, 4, 6)
    weights = scores.softmax(1).repeat_interleave(4, 2).repeat_interleave(4, 3)  # every pixel its patch's kernel
    copies = torch.nn.functional.unfold(frame, 7, padding=3).view(2, 3, 49, 16, 24)  # the 49 shifted copies
    torch.testing.assert_close(shift_patches(frame, scores, 3, 4), (copies * weights[:, None]).sum(2))
    with torch.no_grad():  # untrained: ~90% of each patch's weight on no shift, so close to copy-last
        start = model.shifts(torch.zeros(1, 8, 4, 4)).softmax(1)[0, 12]
    assert torch.allclose(start, torch.full_like(start, 0.9), atol=0.01)


def test_the_shift_head_starts_with_the_zero_move_at_its_still_share_and_a_trainer_sets_it(tmp_path):
    """0.9 is the first models' start (log(9 x 81)); --still 0.99 starts nearer copy-last,
    which real video needs (a start that blurs compounds over the rollout)."""
    import math

    config = PredictorConfig(width=8, blocks=1, shift_radius=4, shift_kernel="splat", history=4, moves=True)
    model = Predictor(config)
    assert model.shifts.bias[40].item() == pytest.approx(math.log(9 * 81))
    assert torch.softmax(model.shifts.bias, 0)[40].item() == pytest.approx(0.9, abs=0.002)
    model.start_still(0.99)
    assert torch.softmax(model.shifts.bias, 0)[40].item() == pytest.approx(0.99, abs=0.001)
    trainer = PredictTrainer(MovingMnist.__new__(MovingMnist), PredictTrainConfig(model=config, still=0.99), tmp_path, torch.device("cpu"))
    for network in (trainer.model, trainer.average):
        assert torch.softmax(network.shifts.bias, 0)[40].item() == pytest.approx(0.99, abs=0.001)


def test_the_pixel_shift_head_gives_each_pixel_its_own_kernel_and_a_hard_one_moves_exactly():
    model = Predictor(PredictorConfig(width=8, blocks=1, shift_radius=2, shift_kernel="pixel")).eval()
    frame, scores = torch.rand(2, 1, 16, 16), torch.randn(2, 25 * 16, 4, 4)
    weights = torch.nn.functional.pixel_shuffle(scores, 4).softmax(1)  # (2, 25, 16, 16): one kernel a pixel
    copies = torch.nn.functional.unfold(frame, 5, padding=2).view(2, 1, 25, 16, 16)
    torch.testing.assert_close(shift_pixels(frame, scores, 2, 4), (copies * weights[:, None]).sum(2))
    with torch.no_grad():  # untrained: every pixel ~90% on no shift
        start = torch.nn.functional.pixel_shuffle(model.shifts(torch.zeros(1, 8, 4, 4)), 4).softmax(1)[0, 12]
    assert torch.allclose(start, torch.full_like(start, 0.9), atol=0.01)

    scores = torch.randn(2, 25 * 16, 4, 4, requires_grad=True)
    moved = shift_pixels(frame, scores, 2, 4, hard=True)
    chosen = torch.nn.functional.pixel_shuffle(scores, 4).argmax(1)  # (2, 16, 16)
    picked = copies[:, 0].gather(1, chosen[:, None])[:, 0]
    torch.testing.assert_close(moved[:, 0], picked)  # one of the frame's own values: no blend
    moved.sum().backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0  # the softmax still learns


def test_commit_fed_scores_the_blend_and_feeds_back_the_most_likely_move():
    torch.manual_seed(0)
    config = PredictorConfig(width=8, blocks=1, key_dim=8, value_dim=8, fusion_hidden=8, shift_radius=2, commit="fed")
    model = Predictor(config).eval()
    torch.nn.init.normal_(model.shifts.weight, std=2.0)  # an uncertain, varied head
    frames = torch.rand(1, 3, 1, 16, 16)
    with torch.no_grad():
        predicted, fed, _ = model.step(frames, None, 3)
        decoded = model.decoder(torch.cat([model.encoder(torch.nn.functional.pixel_unshuffle(frames.flatten(1, 2), 4)), torch.zeros(1, 8, 4, 4)], 1))
        scores = model.shifts(decoded)
    last = frames[:, -1]
    torch.testing.assert_close(predicted, shift_patches(last, scores, 2, 4).clamp(1e-3, 1 - 1e-3), atol=1e-5, rtol=0)
    torch.testing.assert_close(fed, shift_patches(last, scores, 2, 4, hard=True).clamp(1e-3, 1 - 1e-3), atol=1e-5, rtol=0)
    assert not torch.allclose(predicted, fed, atol=1e-3)
    with torch.no_grad():  # the rollout feeds ``fed`` back: its next frame is the one made from the committed move
        rolled = model.rollout(frames, 2, None)
        after = model.step(torch.stack([frames[0, 1], frames[0, 2], fed[0]])[None], None, 4).predicted
    torch.testing.assert_close(rolled[:, 1], after)


def test_a_recurrent_predictor_carries_its_state_through_the_rollout():
    torch.manual_seed(0)
    model = Predictor(PredictorConfig(width=8, blocks=1, key_dim=8, value_dim=8, fusion_hidden=8, recurrent=True)).eval()
    torch.nn.init.normal_(model.out.weight, std=0.5)  # not the copy-last start: the state shows in the output
    torch.nn.init.normal_(model.motion_out.weight, std=0.5)  # nor the stateless start
    frames = torch.rand(1, 6, 1, 16, 16)
    with torch.no_grad():
        rolled = model.rollout(frames, 2, None)
        state, stepped, fresh = None, [], []
        inputs = list(frames[0])
        for t in range(3, 8):
            predicted, _, state = model.step(torch.stack(inputs[t - 3 : t])[None], None, t, state)
            fresh.append(model.step(torch.stack(inputs[t - 3 : t])[None], None, t)[0])
            inputs += [predicted[0]] if t >= 6 else []
            stepped.append(predicted)
    assert state.gru.shape == (1, 8, 4, 4) and state.fields is None
    torch.testing.assert_close(rolled, torch.stack(stepped, 1))
    assert not torch.allclose(stepped[-1], fresh[-1])  # a step without the state predicts otherwise


def test_a_longer_history_reads_blank_frames_before_the_first():
    torch.manual_seed(0)
    model = Predictor(PredictorConfig(width=8, blocks=1, key_dim=8, value_dim=8, fusion_hidden=8, history=5)).eval()
    torch.nn.init.normal_(model.out.weight, std=0.5)  # not the copy-last start: the inputs show in the output
    frames = torch.rand(1, 4, 1, 16, 16)
    stack = model.stack(list(frames.unbind(1)))
    assert stack.shape == (1, 5, 1, 16, 16) and not stack[:, 0].any()
    torch.testing.assert_close(stack[:, 1:], frames)
    with torch.no_grad():
        rolled = model.rollout(frames, 2, None)
        first = model.step(torch.cat([torch.zeros(1, 2, 1, 16, 16), frames[:, :3]], 1), None, 3).predicted
    torch.testing.assert_close(rolled[:, 0], first)
    with pytest.raises(ValueError, match="history 2"):
        Predictor(PredictorConfig(history=2))


def test_a_move_reading_splat_predictor_carries_its_fields_and_starts_as_the_model_without_them():
    torch.manual_seed(0)
    shape = dict(width=8, blocks=1, key_dim=8, value_dim=8, fusion_hidden=8, shift_radius=2, shift_kernel="splat", history=5)
    model = Predictor(PredictorConfig(**shape, moves=True)).eval()
    torch.nn.init.normal_(model.shifts.weight, std=1.0)
    torch.nn.init.normal_(model.move_reader[-1].weight, std=1.0)  # the fields show in the output
    frames = torch.rand(2, 7, 1, 16, 16)
    with torch.no_grad():
        rolled = model.rollout(frames, 2, None)
        carried, stepped, seen = None, [], list(frames.unbind(1))
        for t in range(3, 9):
            predicted, fed, carried = model.step(model.stack(seen[:t]), None, t, carried)
            fresh = model.step(model.stack(seen[:t]), None, t).predicted  # every field matched anew
            torch.testing.assert_close(predicted, fresh)
            seen += [fed] if t >= 7 else []
            stepped.append(predicted)
        torch.testing.assert_close(rolled, torch.stack(stepped, 1))
        assert carried.fields.shape == (2, 4, 2, 4, 4) and carried.gru is None  # a field per 4x4 patch
        plain = Predictor(PredictorConfig(**shape)).eval()
        grown = Predictor(PredictorConfig(**shape, moves=True)).eval()
        load_trained(grown, plain)  # the reader keeps its zero start: the same predictions as without it
        torch.testing.assert_close(grown.rollout(frames, 2, None), plain.rollout(frames, 2, None))
    with pytest.raises(ValueError, match="shift_radius"):
        Predictor(PredictorConfig(moves=True))


def test_init_from_a_shorter_history_starts_out_computing_the_same():
    torch.manual_seed(0)
    short = Predictor(TINY).eval()
    for tensor in (short.out.weight, short.encoder[0][0].weight):
        torch.nn.init.normal_(tensor, std=0.5)
    longer = Predictor(PredictorConfig(**{**TINY.__dict__, "history": 6})).eval()
    load_trained(longer, short)
    frames = torch.rand(2, 8, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(longer.rollout(frames, 3, None), short.rollout(frames, 3, None))
    assert longer.encoder[0][0].weight[:, :48].abs().sum() == 0  # the three older frames: 3 x 16 channels, zero


@pytest.mark.slow
def test_training_steps_learn_and_resume_exactly(digits_file, tmp_path):
    config = PredictTrainConfig(steps=4, model=TINY, val_sequences=2)
    whole = PredictTrainer(MovingMnist(digits_file), config, tmp_path / "a", torch.device("cpu"))
    (tmp_path / "a").mkdir()
    losses = [whole.train_step()["loss"] for _ in range(4)]
    assert all(np.isfinite(losses))
    (tmp_path / "b").mkdir()
    first = PredictTrainer(MovingMnist(digits_file), config, tmp_path / "b", torch.device("cpu"))
    first.train_step(), first.train_step()
    first.save_checkpoint()
    second = PredictTrainer(MovingMnist(digits_file), config, tmp_path / "b", torch.device("cpu"))
    second.load_checkpoint()
    second.train_step(), second.train_step()
    for mine, theirs in zip(second.average.state_dict().values(), whole.average.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, theirs)
    scores = second.validate()
    assert set(scores) == {"mse", "mae", "ssim", "copy_last_mse"} and scores["mse"] >= 0


@pytest.mark.slow
def test_train_predict_command_writes_the_averaged_model(vidseg, digits_file, tmp_path):
    out = tmp_path / "run"
    run = vidseg("train", "predict", "--digits", digits_file, "--out", out, "--steps", "2", "--width", "8",
                 "--blocks", "1", "--val-every", "2", "--val-sequences", "1", "--device", "cpu")
    assert run.code == 0, run.stderr
    assert Path(run.stdout.strip()) == out / "predictor.safetensors"
    assert "validation at step 2: mse" in run.stderr and "copy_last_mse" in run.stderr
    with safe_open(str(out / "predictor.safetensors"), framework="pt") as handle:
        assert handle.metadata()["arch"] == ARCH and PredictorConfig.from_json(handle.metadata()["config"]).width == 8


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("--digits", "missing.csv.gz"), "MNIST digits not found"),
        (("--memory", "lru"), "lru"),
        (("--lr", "0"), "--lr must be positive"),
        (("--loss", "l3"), "unknown --loss 'l3'"),
    ],
)
def test_bad_train_predict_input_is_one_line(vidseg, digits_file, tmp_path, args, text):
    base = {"--digits": str(digits_file), "--out": str(tmp_path / "run"), "--steps": "1"}
    for name, value in zip(args[::2], args[1::2], strict=True):
        base[name] = value if name != "--digits" else str(tmp_path / value)
    run = vidseg("train", "predict", *[x for pair in base.items() for x in pair], "--width", "8", "--blocks", "1")
    assert run.code == 2 and text in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_train_predict_on_a_folder_of_videos_then_predict_with_it(vidseg, tmp_path):
    """--data DIR: colour frame folders at --size; the model records its size and colour
    mode, and vidseg predict brings any input to them."""
    from vidseg_cli.synthetic import frames as synthetic_frames

    data = tmp_path / "videos"
    for number in range(2):
        folder = data / f"clip{number}"
        folder.mkdir(parents=True)
        for index, (image, _) in enumerate(synthetic_frames(22, 48, 64, objects=2, seed=number)):
            Image.fromarray(image).save(folder / f"{index:05d}.png")
    out = tmp_path / "run"
    run = vidseg("train", "predict", "--data", data, "--size", "32", "--colour", "--out", out, "--steps", "2",
                 "--batch", "2", "--width", "8", "--blocks", "1", "--val-every", "2", "--val-sequences", "2", "--device", "cpu")
    assert run.code == 0, run.stderr
    with safe_open(str(out / "predictor.safetensors"), framework="pt") as handle:
        config = PredictorConfig.from_json(handle.metadata()["config"])
    assert (config.channels, config.frame_height, config.frame_width) == (3, 32, 44)  # 48x64 -> short side 32, x4
    made = vidseg("predict", data / "clip0", "--model", out / "predictor.safetensors", "--frames", "2",
                  "--out", tmp_path / "p", "--format", "png")
    assert made.code == 0, made.stderr
    predicted = Image.open(tmp_path / "p" / "00022.png")
    assert predicted.mode == "RGB" and predicted.size == (44, 32)


@pytest.mark.slow
def test_resuming_a_run_started_before_a_setting_existed(vidseg, digits_file, tmp_path):
    """config.json of an older run lacks the settings added since; at their defaults the
    run resumes, a changed one is refused."""
    import json

    out = tmp_path / "run"
    args = ("train", "predict", "--digits", digits_file, "--out", out, "--steps", "2", "--width", "8", "--blocks", "1",
            "--val-every", "1", "--val-sequences", "1", "--device", "cpu", "--batch", "2")
    assert vidseg(*args, "--steps", "1").code == 0
    saved = json.loads((out / "config.json").read_text())
    del saved["model"]["frame_height"], saved["teacher_share"]
    saved["steps"] = 2
    (out / "config.json").write_text(json.dumps(saved))
    assert vidseg(*args, "--resume").code == 0
    refused = vidseg(*args, "--resume", "--teacher-share", "0.2")
    assert refused.code == 2 and "teacher_share" in refused.stderr


def test_one_video_file_is_a_clip_source_and_an_image_is_not(tmp_path):
    """--data and --val take a single video as well as a folder; errors name the flag."""
    from vidseg_cli.errors import VidsegError
    from vidseg_cli.predict.clips import VideoClips
    from vidseg_cli.predict.data import write_frames
    from vidseg_cli.synthetic import frames as synthetic_frames

    video = tmp_path / "clip.mp4"  # a grey 64x64 H.264 file
    write_frames(np.stack([image.mean(axis=2).astype(np.uint8) for image, _ in synthetic_frames(24, 64, 64, objects=1, seed=0)]), video)
    clips = VideoClips(video, 32, 1, "--val")
    assert (clips.height, clips.width) == (32, 32) and len(clips.videos) == 1 and len(clips.videos[0]) == 24
    assert clips.sample(np.random.default_rng(0), 2).shape == (2, 20, 1, 32, 32)
    Image.new("RGB", (64, 48)).save(tmp_path / "frame.png")
    with pytest.raises(VidsegError, match=r"^--val .*frame.png: not a video"):
        VideoClips(tmp_path / "frame.png", 32, 3, "--val")


def test_moving_mnist_needs_its_digits_and_a_folder_needs_videos(vidseg, tmp_path):
    run = vidseg("train", "predict", "--out", tmp_path / "a", "--steps", "1")
    assert run.code == 2 and "--digits FILE" in run.stderr and not (tmp_path / "a").exists()
    (tmp_path / "empty").mkdir()
    run = vidseg("train", "predict", "--data", tmp_path / "empty", "--out", tmp_path / "b", "--steps", "1")
    assert run.code == 2 and "no videos or frame folders" in run.stderr and not (tmp_path / "b").exists()


def test_sigterm_saves_the_checkpoint_and_the_model_at_that_step(vidseg, digits_file, tmp_path, monkeypatch):
    """A predictor is usable at any step (the averaged weights): a stopped run leaves one."""
    from vidseg_cli.predict.train import PredictTrainer
    from vidseg_cli.signals import Terminated

    def one_step_then_sigterm(trainer, log, *args, **kwargs):
        trainer.train_step()
        raise Terminated

    monkeypatch.setattr(PredictTrainer, "run", one_step_then_sigterm)
    out = tmp_path / "run"
    run = vidseg("train", "predict", "--digits", digits_file, "--out", out, "--steps", "3", "--width", "8",
                 "--blocks", "1", "--batch", "2", "--device", "cpu")
    assert run.code == 143 and "terminated at step 1; checkpoint saved, model at this step written to" in run.stderr
    with safe_open(str(out / "predictor.safetensors"), framework="pt") as handle:
        assert handle.metadata()["steps"] == "1"


@pytest.mark.slow
def test_train_predict_init_starts_from_a_trained_model_and_adds_the_recurrent_state(vidseg, digits_file, tmp_path):
    shape = ["--width", "8", "--blocks", "1", "--shift-radius", "2", "--batch", "2", "--val-every", "1",
             "--val-sequences", "1", "--device", "cpu", "--digits", digits_file]
    first = vidseg("train", "predict", "--out", tmp_path / "a", "--steps", "1", *shape)
    assert first.code == 0, first.stderr
    trained = tmp_path / "a" / "predictor.safetensors"
    grown = vidseg("train", "predict", "--out", tmp_path / "b", "--steps", "1", "--lr", "1e-9", "--init", trained, "--recurrent", *shape)
    assert grown.code == 0, grown.stderr
    with safe_open(trained, "pt") as before, safe_open(tmp_path / "b" / "predictor.safetensors", "pt") as after:
        assert set(after.keys()) - set(before.keys()) == {k for k in after.keys() if k.startswith("motion")}
        torch.testing.assert_close(after.get_tensor("out.weight"), before.get_tensor("out.weight"), atol=1e-6, rtol=0)
    wider = vidseg("train", "predict", "--out", tmp_path / "c", "--init", trained, *shape[:-6], "--width", "16", *shape[2:])
    assert wider.code == 2 and "--init" in wider.stderr and not (tmp_path / "c").exists()
    restarted = vidseg("train", "predict", "--out", tmp_path / "e", "--init", trained, "--still", "0.99", *shape)
    assert restarted.code == 2 and "--still" in restarted.stderr and not (tmp_path / "e").exists()  # the start is the file's
    longer = vidseg("train", "predict", "--out", tmp_path / "d", "--steps", "1", "--init", trained, "--history", "6", *shape)
    assert longer.code == 0, longer.stderr
    with safe_open(tmp_path / "d" / "predictor.safetensors", "pt") as after:
        assert json.loads(after.metadata()["config"])["history"] == 6

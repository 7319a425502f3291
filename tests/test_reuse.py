"""Reuse-VOS heads: shapes, the gate's start, the losses of eqs 3-5."""

import numpy as np
import pytest
import torch

from vidseg_cli.vos.reuse import heads as reuse


def test_heads_shapes_and_gate_start():
    torch.manual_seed(0)
    heads = reuse.ReuseHeads(reuse.ReuseConfig())
    features8 = torch.randn(1, 40, 11, 13)
    first = (torch.rand(2, 1, 11, 13) > 0.5).float()
    template = heads.matching.template(features8, first)
    assert template.shape == (2, 2, 32)
    torch.testing.assert_close(template.norm(dim=-1), torch.ones(2, 2))
    probability, delta = heads.gate_and_delta(features8, first, template)
    assert probability.shape == (2,) and delta.shape == (2, 1, 11, 13)
    assert ((probability - reuse.GATE_START).abs() < 0.1).all()  # starts near the paper's 15%
    assert delta.abs().max() <= 1.0
    refined = heads.translator(torch.randn(2, 48, 11, 13), delta)
    assert refined.shape == (2, 48, 11, 13)


def test_gate_losses():
    iou = torch.tensor([0.2, 0.9])
    assert torch.equal(reuse.gate_target(iou, 0.5), torch.tensor([0.5, 0.9]))  # the margin lifts low IoU
    p = torch.tensor([0.5, 0.6])
    assert reuse.gate_probability_loss(p, reuse.gate_target(iou, 0.5)).item() == pytest.approx((0 + 0.3**2) / 2)
    assert reuse.gate_probability_loss(p, reuse.gate_target(iou, 0.5), tolerance=0.4).item() == pytest.approx(0.4**2)
    previous, target = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    assert reuse.delta_loss(torch.ones(1, 1, 2, 2), target, previous).item() == 0.0


def test_mask_iou():
    a = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    b = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    torch.testing.assert_close(reuse.mask_iou(a, b), torch.tensor([0.5, 1.0]))


def test_backbone_halves_equal_the_full_pass():
    from vidseg_cli.models.registry import backbone

    image = torch.rand(1, 3, 70, 90) * 255
    with torch.no_grad():
        full = backbone()(image)
        s4, s8 = backbone().to_stride8(image)
        assert torch.equal(s4, full.s4) and torch.equal(s8, full.s8)
        assert torch.equal(backbone().stride8_to_16(s8), full.s16)


def test_reuse_training_moves_only_the_reuse_heads_and_lowers_the_loss(tmp_path):
    import numpy as np

    from vidseg_cli.models.registry import backbone
    from vidseg_cli.synthetic import write_davis
    from vidseg_cli.vos.clips import ClipSampler
    from vidseg_cli.vos.memnet import MemNetConfig, MemoryNetwork
    from vidseg_cli.vos.reuse.train import reuse_loss

    torch.manual_seed(0)
    tiny = MemNetConfig(key_dim=16, value_dim=16, mask_dim=8, decoder_dims=(16, 8, 8), fusion_hidden=8, topk=4)
    model = MemoryNetwork(backbone(), tiny).eval().requires_grad_(False)
    heads = reuse.ReuseHeads(reuse.ReuseConfig(refined_dim=8, match_dim=8, gate_dim=4))
    root = write_davis(tmp_path, sequences=1, length=8, height=64, width=96)
    clip = ClipSampler(root, 4, (64, 96), np.random.default_rng(0)).sample(max_gap=1, still=False)
    optimizer = torch.optim.Adam(heads.parameters(), lr=3e-3)
    losses = []
    gate_losses = {t: reuse_loss(model, heads, clip, 0.0, target=t)[1]["gate"] for t in ("full", "ground-truth")}
    assert gate_losses["full"] != gate_losses["ground-truth"]
    for _ in range(15):
        loss, parts = reuse_loss(model, heads, clip, margin=0.0)
        assert set(parts) == {"gate", "delta", "mask"}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in heads.gate.parameters())


def test_full_gate_target_is_the_agreement_of_the_reused_mask_with_the_full_one():
    from vidseg_cli.vos.reuse.train import agreement

    full = torch.zeros(1, 4, 4, dtype=torch.bool)
    full[0, :2] = True
    logits = torch.full((1, 4, 4), -1.0)
    assert agreement(logits, full).item() == 0.0
    logits[0, :2] = 1.0
    assert agreement(logits, full).item() == 1.0
    logits[0, 2:] = 1.0  # twice the full mask: IoU 1/2
    assert agreement(logits, full).item() == pytest.approx(0.5)
    assert agreement(logits, full, strictness=2.0).item() == pytest.approx(0.25)


def _reuse_session(tau: float, mode: str = "refine", always: bool = True):
    from vidseg_cli.engine.job import make_bank
    from vidseg_cli.models.registry import backbone
    from vidseg_cli.options import MemoryOptions
    from vidseg_cli.vos.memnet import MemNetConfig, MemoryNetwork
    from vidseg_cli.vos.reuse.model import ReuseModel
    from vidseg_cli.vos.reuse.state import ReuseOptions, ReuseTracker
    from vidseg_cli.vos.session import VOSSession

    torch.manual_seed(0)
    tiny = MemNetConfig(key_dim=16, value_dim=16, mask_dim=8, decoder_dims=(16, 8, 8), fusion_hidden=8, topk=4)
    model = ReuseModel(MemoryNetwork(backbone(), tiny), reuse.ReuseHeads(reuse.ReuseConfig(refined_dim=8, match_dim=8, gate_dim=4))).eval()
    if always:  # a gate that always says "similar"
        with torch.no_grad():
            model.heads.gate.second.bias.fill_(20.0)
    bank = make_bank(MemoryOptions(slots=3), model.fusion())
    tracker = ReuseTracker(model, ReuseOptions(tau=tau, mode=mode))
    return VOSSession(model, bank, 64, torch.device("cpu"), reuse=tracker), model


def _run(session, length=6):
    from vidseg_cli.synthetic import frames

    return [session.step(image, truth if index == 0 else None) for index, (image, truth) in enumerate(frames(length, 64, 80, objects=2, seed=4))]


def test_reused_frames_skip_the_heavy_path_and_memory():
    session, _ = _reuse_session(tau=0.7)
    results = _run(session)
    # frame 0 has the mask, frame 1 is the first full prediction (the first R8); then all reuse
    assert [r.reused for r in results] == [False, False, True, True, True, True]
    assert [r.slots for r in results] == [1, 2, 2, 2, 2, 2]  # reused frames are not written
    assert session.reuse.reused == 4


def test_tau_one_never_reuses_and_equals_the_plain_model():
    from vidseg_cli.engine.job import make_bank
    from vidseg_cli.options import MemoryOptions
    from vidseg_cli.vos.session import VOSSession

    session, model = _reuse_session(tau=1.0)
    reusing = _run(session)
    plain = VOSSession(model.base, make_bank(MemoryOptions(slots=3), model.fusion()), 64, torch.device("cpu"))
    for ours, theirs in zip(reusing, _run(plain), strict=True):
        assert not ours.reused
        assert (ours.labels == theirs.labels).all()


def test_copy_mode_repeats_the_last_computed_mask():
    session, _ = _reuse_session(tau=0.5, mode="copy")
    results = _run(session)
    for later in results[2:]:
        assert later.reused and (later.labels == results[1].labels).all()


def test_a_gate_below_tau_computes():
    session, model = _reuse_session(tau=0.5, always=False)
    with torch.no_grad():
        model.heads.gate.second.bias.fill_(-20.0)
    assert not any(r.reused for r in _run(session))


def test_train_reuse_command_writes_heads_that_load_only_with_their_model(vidseg, tmp_path):
    from vidseg_cli.models.registry import backbone
    from vidseg_cli.synthetic import write_davis
    from vidseg_cli.vos.memnet import MemNetConfig, MemoryNetwork
    from vidseg_cli.vos.reuse.model import create_reuse_model
    from vidseg_cli.vos.train import save_model

    tiny = MemNetConfig(key_dim=16, value_dim=16, mask_dim=8, decoder_dims=(16, 8, 8), fusion_hidden=8, topk=4)
    base, other = tmp_path / "base.safetensors", tmp_path / "other.safetensors"
    torch.manual_seed(0)
    save_model(MemoryNetwork(backbone(), tiny), base)
    save_model(MemoryNetwork(backbone(), tiny), other)
    data = write_davis(tmp_path / "davis", sequences=1, length=8, height=64, width=96)
    run = vidseg("train", "reuse", "--model", str(base), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--steps", "3", "--clip-length", "3", "--crop", "64x96", "--max-gap", "1")
    assert run.code == 0, run.stderr
    heads = run.stdout.strip()
    assert heads.endswith("reuse.safetensors") and "step 3/3" in (tmp_path / "run" / "train.log").read_text()
    model = create_reuse_model(str(base), heads)
    assert model.heads.translator.merge.out_channels == 8  # sized to the model's decoder
    with pytest.raises(Exception, match="trained for another model"):
        create_reuse_model(str(other), heads)
    again = vidseg("train", "reuse", "--model", str(base), "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "3")
    assert again.code == 2 and "not empty" in again.stderr
    assert vidseg("train", "reuse", "--model", "propagate", "--data", str(data), "--out", str(tmp_path / "p")).code == 2


@pytest.mark.slow
def test_bench_and_segment_run_reuse_end_to_end(vidseg, tmp_path, clip):
    import json

    from vidseg_cli.models.registry import backbone
    from vidseg_cli.vos.memnet import MemNetConfig, MemoryNetwork
    from vidseg_cli.vos.reuse.train import save_heads
    from vidseg_cli.vos.train import save_model
    from vidseg_cli.weights.registry import file_sha256

    tiny = MemNetConfig(key_dim=16, value_dim=16, mask_dim=8, decoder_dims=(16, 8, 8), fusion_hidden=8, topk=4)
    base, heads_file = tmp_path / "base.safetensors", tmp_path / "heads.safetensors"
    torch.manual_seed(0)
    save_model(MemoryNetwork(backbone(), tiny), base)
    heads = reuse.ReuseHeads(reuse.ReuseConfig(refined_dim=8, match_dim=8, gate_dim=4))
    with torch.no_grad():
        heads.gate.second.bias.fill_(20.0)  # always similar: every frame after the first full one reuses
    save_heads(heads, heads_file, file_sha256(base))
    run = vidseg("bench", "--model", str(base), "--size", "48", "--reuse", "1,0.5", "--reuse-mode", "refine,copy",
                 "--reuse-heads", str(heads_file), "--json")
    assert run.code == 0, run.stderr
    results = json.loads(run.stdout)["results"]
    assert [(r["reuse"], r["reuse_mode"]) for r in results] == [(1.0, "refine"), (0.5, "refine"), (0.5, "copy")]
    assert results[0]["reuse_rate"] == 0.0 and results[1]["reuse_rate"] > 0.5
    video, mask = clip
    out = vidseg("segment", str(video), "--mask", str(mask), "--model", str(base), "--size", "48", "--reuse", "0.5",
                 "--reuse-heads", str(heads_file), "--out", str(tmp_path / "masks"), "--json")
    assert out.code == 0, out.stderr
    assert json.loads(out.stdout)["reused_frames"] == 12 - 2


@pytest.mark.parametrize("mode", ["copy", "refine"])
def test_an_object_entering_mid_clip_is_in_every_reused_frame_after_it(mode):
    """Object 2's mask comes on frame 3: no reused frame after it may copy or translate a
    state from before it (one object), so every later result knows both objects."""
    from vidseg_cli.synthetic import frames

    session, _ = _reuse_session(tau=0.5, mode=mode)
    session.keep_probabilities = True
    results = []
    for index, (image, truth) in enumerate(frames(9, 64, 80, objects=2, seed=4)):
        mask = {0: np.where(truth == 1, 1, 0), 3: np.where(truth == 2, 2, 0)}.get(index)
        results.append(session.step(image, None if mask is None else mask.astype(np.uint8)))
    assert any(r.reused for r in results[4:])  # the gate reuses after the newcomer, too
    for result in results[3:]:
        assert result.object_ids == (1, 2) and result.probabilities.shape[0] == 2
    assert (results[3].labels == 2).any()

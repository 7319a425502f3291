"""SpVOS in the backbone: the three ways a gated block runs, the session's mixed processing,
`vidseg train sparse` and the --sparse options end to end."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vidseg_cli.models.registry import backbone
from vidseg_cli.vos.memnet import MemNetConfig, MemoryNetwork
from vidseg_cli.vos.sparse.gates import COMPUTE, REUSE, SKIP
from vidseg_cli.vos.sparse.model import SparseModel
from vidseg_cli.vos.sparse.network import (
    LayerState,
    Shares,
    SparseConfig,
    SparseGates,
    dense_runner,
    object_cue,
    relaxed_runner,
    run_backbone,
    sparse_runner,
)

TINY = MemNetConfig(key_dim=16, value_dim=16, mask_dim=8, decoder_dims=(16, 8, 8), fusion_hidden=8, topk=4)


def _gates(mode: str = "triple", tile: int = 4, model: MemoryNetwork | None = None) -> SparseGates:
    decoder = (model or MemoryNetwork(backbone(), TINY)).heads.decoder
    return SparseGates(SparseConfig(mode=mode, tile=tile), backbone(), decoder).eval()


def _force(gates: SparseGates, policy: int) -> None:
    """Every gate picks ``policy`` everywhere."""
    with torch.no_grad():
        for gate in gates.gates.values():
            gate.conv.weight.zero_()
            gate.conv.bias.copy_(torch.tensor([10.0 if p == policy else 0.0 for p in gate.policies]))


def _pattern(gates: SparseGates, layout: str = "checkerboard") -> None:
    """Gates pick SKIP, REUSE and COMPUTE per tile: in a checkerboard-like pattern (the layer
    runs dense), computing two opposite corner tiles (it runs those tiles alone) or a compact block of
    tiles among the others (it runs their bounding rectangle as one crop)."""
    for gate in gates.gates.values():
        def forward(current, previous, cue=None, gate=gate):
            rows, cols = current.shape[-2:]
            index = (torch.arange(rows)[:, None] + 2 * torch.arange(cols)[None, :]) % len(gate.policies)
            index = torch.where(index == len(gate.policies) - 1, 0, index)  # no COMPUTE yet
            if layout == "checkerboard":
                index = (torch.arange(rows)[:, None] + 2 * torch.arange(cols)[None, :]) % len(gate.policies)
            elif layout == "corners":
                index[0, 0] = index[-1, -1] = len(gate.policies) - 1
            else:
                index[rows // 4 : rows // 4 + 2, cols // 3 : cols // 3 + 2] = len(gate.policies) - 1
            scores = torch.nn.functional.one_hot(index, len(gate.policies)).permute(2, 0, 1).float()
            return scores.expand(current.shape[0], -1, -1, -1)
        gate.forward = forward


def _images(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 64, 96, generator=generator) * 255


def test_dense_runner_is_the_plain_backbone_and_records_every_gated_block():
    gates, image = _gates(), _images()[:1]
    state = LayerState()
    with torch.no_grad():
        ours = run_backbone(backbone(), image, dense_runner(gates, state))
        theirs = backbone()(image)
    for a, b in zip((ours.s4, ours.s8, ours.s16), (theirs.s4, theirs.s8, theirs.s16), strict=True):
        assert torch.equal(a, b)
    assert sorted(state.outputs) == list(range(11)) and state.outputs[10].shape == theirs.s16.shape


@pytest.mark.parametrize("layout", ["checkerboard", "corners", "block"])
def test_sparse_blocks_compute_reuse_and_skip_exactly_where_their_gates_say(layout):
    gates, images = _gates(), _images()
    _pattern(gates, layout)
    state = LayerState()
    with torch.no_grad():
        run_backbone(backbone(), images[:1], dense_runner(gates, state))
        previous = dict(state.outputs)
        shares, seen = Shares(), {}
        inner = sparse_runner(gates, state, shares)

        def spy(index, block, x):
            seen[index] = (x, block(x))
            return inner(index, block, x)

        run_backbone(backbone(), images[1:], spy)
    for index, policy in shares.policies.items():
        policy = policy[0]
        x, dense = seen[index]
        out = state.outputs[index]
        block = backbone()._blocks[index]
        pixels = policy.repeat_interleave(4, 0).repeat_interleave(4, 1)[: out.shape[-2], : out.shape[-1]]
        torch.testing.assert_close(out[..., pixels == COMPUTE], dense[..., pixels == COMPUTE], atol=1e-4, rtol=1e-4)
        assert torch.equal(out[..., pixels == REUSE], previous[index][..., pixels == REUSE])
        skipped = x if block.residual else torch.zeros_like(out)
        assert torch.equal(out[..., pixels == SKIP], skipped[..., pixels == SKIP])
        expected = {SKIP, REUSE, COMPUTE} if block.residual else {REUSE, COMPUTE}  # only residual layers skip
        assert set(gates.gate(index).policies) == expected
        assert expected <= set(policy.unique().tolist()) or policy.numel() < 6


@pytest.mark.parametrize(("policy", "expected"), [(COMPUTE, 1.0), (SKIP, 0.0)])
def test_counted_flops_follow_the_computed_share(policy, expected):
    base = MemoryNetwork(backbone(), TINY)
    model = SparseModel(base, _gates(model=base)).eval()
    image = _images()[0]
    state = LayerState()
    model.encode_dense(image, state)
    _force(model.gates, policy)
    with FlopCounterMode(display=False) as dense_count:
        model.encode(image)
    with FlopCounterMode(display=False) as sparse_count:
        shares = Shares()
        model.encode_sparse(image, state, shares)
    assert all(float(s) == expected for s in shares.computed.values())
    ratio = sparse_count.get_total_flops() / dense_count.get_total_flops()
    assert (ratio > 0.99) if expected == 1.0 else (ratio < 0.1)  # gates on pooled maps cost next to nothing


def test_relaxed_blocks_equal_dense_when_computing_and_send_gradients_to_the_gates():
    gates, images = _gates().train(), _images()
    state = LayerState()
    with torch.no_grad():
        run_backbone(backbone(), images[:1], dense_runner(gates, state))
        dense = backbone()(images[1:])
    shares = Shares()
    features = run_backbone(backbone(), images[1:], relaxed_runner(gates, state, shares))
    assert all(0 <= float(s.detach()) <= 1 for s in shares.computed.values())
    (features.s16.sum() + sum(shares.computed.values())).backward()
    backbone_gates = [g for key, g in gates.gates.items() if key.isdigit()]
    assert all(g.conv.weight.grad is not None and g.conv.weight.grad.abs().sum() > 0 for g in backbone_gates)
    _force(gates, COMPUTE)
    state_all = LayerState()
    with torch.no_grad():
        run_backbone(backbone(), images[:1], dense_runner(gates, state_all))
        computed = run_backbone(backbone(), images[1:], relaxed_runner(gates, state_all, Shares()))
    torch.testing.assert_close(computed.s16, dense.s16)


def test_a_sparse_session_runs_memory_frames_dense_and_writes_only_them():
    from vidseg_cli.engine.job import make_bank
    from vidseg_cli.options import MemoryOptions
    from vidseg_cli.synthetic import frames
    from vidseg_cli.vos.session import VOSSession
    from vidseg_cli.vos.sparse.state import SparseTracker

    torch.manual_seed(0)
    base = MemoryNetwork(backbone(), TINY)
    model = SparseModel(base, _gates(model=base)).eval()
    _force(model.gates, SKIP)
    options = MemoryOptions(memory="stremn", slots=4, write_every=3)
    session = VOSSession(model, make_bank(options, model.fusion()), 64, torch.device("cpu"),
                         sparse=SparseTracker(model), write_every=3)
    written = []
    for index, (image, truth) in enumerate(frames(8, 64, 96, objects=1, seed=0)):
        result = session.step(image, truth if index == 0 else None)
        written.append(result.computed)
    # frame 1 runs the decoder for the first time (frame 0's mask needed no decoding): dense there
    assert 0 < written[1] < 0.1
    assert written[:1] + written[2:] == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert sorted(slot.frame for slot in session.bank.slots) == [0, 3, 6]


def test_the_decoder_convolutions_are_gated_per_object_too():
    from vidseg_cli.memory.slot import Slot

    torch.manual_seed(0)
    base = MemoryNetwork(backbone(), TINY).eval()
    model = SparseModel(base, _gates(model=base)).eval()
    images = _images()
    state = LayerState()
    first = model.encode_dense(images[0], state)
    key, value = model.memorize(first, torch.rand(2, *first.grid))
    slots = [Slot(key, value, frame=0, permanent=True)]
    model.segment_dense(first, slots, 2, state)
    assert {"enter0", "enter2", "refine8", "refine4"} <= set(state.outputs)
    assert state.outputs["refine4"].shape[0] == 2  # one batch item per object
    _force(model.gates, COMPUTE)
    second = model.encode_sparse(images[1], state, Shares())
    shares = Shares()
    sparse = model.segment_sparse(second, slots, 2, state, shares)
    torch.testing.assert_close(sparse, base.segment(base.encode(images[1]), slots, 2), atol=1e-5, rtol=1e-5)
    assert shares.computed["refine4"] == 1.0
    _pattern(model.gates)
    shares = Shares()
    model.segment_sparse(model.encode_sparse(images[0], state, Shares()), slots, 2, state, shares)
    assert shares.policies["refine4"].shape[0] == 2 and 0 < float(shares.computed["refine4"]) < 1


def test_the_object_cue_is_the_last_mask_and_its_dilations_by_8_and_24_cells():
    probs = torch.zeros(2, 60, 70)
    probs[0, 30, 35] = 0.8
    cue = object_cue(probs)
    assert cue.shape == (2, 3, 60, 70) and not cue[1].any()
    assert torch.equal(cue[0, 0], probs[0])
    for channel, radius in ((1, 8), (2, 24)):
        rows, cols = cue[0, channel].nonzero().unbind(1)
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (30 - radius, 30 + radius, 35 - radius, 35 + radius)
        assert float(cue[0, channel].max()) == pytest.approx(0.8)


def test_object_aware_gates_read_the_cue_of_their_own_object():
    model = MemoryNetwork(backbone(), TINY)
    gates = SparseGates(SparseConfig(tile=4, object_aware=True), backbone(), model.heads.decoder)
    assert gates.gate(1).conv.in_channels == 2 * 16 + 3 and gates.gate("refine4").conv.in_channels == 2 * 8 + 3
    with torch.no_grad():
        for gate in gates.gates.values():
            gate.conv.weight.zero_()
            gate.conv.weight[:, -3:] = 1.0  # the scores follow the cue alone
    x = torch.rand(2, 8, 32, 48)  # the decoder's stride-4 map for two objects
    cue = torch.zeros(2, 3, 32, 48)
    cue[1, :, :8, :8] = 1.0  # only object 1 was in the top-left corner
    scores = gates.scores("refine4", x, x, cue)
    moved = scores[:, :, 0, 0] - scores[:, :, 5, 5]  # the corner tile against one far from it
    assert moved[0].abs().max() == 0 and moved[1].abs().max() > 0
    backbone_scores = gates.scores(2, torch.rand(1, 24, 32, 48), torch.rand(1, 24, 32, 48), cue)
    assert backbone_scores.shape[0] == 1  # one backbone pass serves every object: the cue's max
    assert torch.equal(gates.scores("refine4", x, x, None), gates.scores("refine4", x, x, torch.zeros_like(cue)))


def test_reuse_far_gates_never_reuse_within_32_pixels_of_an_object():
    model = MemoryNetwork(backbone(), TINY)
    gates = SparseGates(SparseConfig(tile=4, object_aware=True, reuse_far=True), backbone(), model.heads.decoder)
    with torch.no_grad():
        for gate in gates.gates.values():  # every gate prefers REUSE wherever it may
            gate.conv.weight.zero_()
            gate.conv.bias.copy_(torch.tensor([5.0 if p == REUSE else 0.0 for p in gate.policies]))
    probs = torch.zeros(1, 32, 48)
    probs[0, :4, :4] = 1.0  # an object in the top-left corner of the stride-4 map
    near = object_cue(probs)[0, 1, ::4, ::4] > 0.5  # the 32 px dilation (8 cells) on the 8x12 tile grid
    assert near.any() and not near.all()
    for key, channels in ((2, 24), ("refine4", 8)):  # a backbone block and a decoder convolution
        x = torch.rand(1, channels, 32, 48)
        codes = gates.gate(key).decide(gates.scores(key, x, x, object_cue(probs)))[0]
        assert not (codes[near] == REUSE).any() and (codes[~near] == REUSE).all()


def test_a_sparse_session_gives_the_gates_the_last_frames_objects():
    from vidseg_cli.engine.job import make_bank
    from vidseg_cli.options import MemoryOptions
    from vidseg_cli.synthetic import frames
    from vidseg_cli.vos.session import VOSSession
    from vidseg_cli.vos.sparse.state import SparseTracker

    torch.manual_seed(0)
    base = MemoryNetwork(backbone(), TINY)
    gates = SparseGates(SparseConfig(tile=4, object_aware=True), base.backbone, base.heads.decoder).eval()
    model = SparseModel(base, gates).eval()
    tracker = SparseTracker(model)
    session = VOSSession(model, make_bank(MemoryOptions(slots=3), model.fusion()), 64, torch.device("cpu"),
                         sparse=tracker, write_every=3)
    seen = []
    original = tracker.observe
    tracker.observe = lambda probs: (seen.append(probs.clone()), original(probs))
    for index, (image, truth) in enumerate(frames(4, 64, 96, objects=2, seed=0)):
        session.step(image, truth if index == 0 else None)
        assert torch.equal(tracker.state.cue, object_cue(seen[-1])) and tracker.state.cue.shape[:2] == (2, 3)
    assert len(seen) == 4  # every frame, dense or sparse


def test_train_sparse_can_tune_the_heads_that_read_sparse_features(vidseg, tmp_path):
    from vidseg_cli.synthetic import write_davis
    from vidseg_cli.vos.models import create_vos_model
    from vidseg_cli.vos.sparse.model import create_sparse_model

    base, _ = _tiny_model_files(tmp_path)
    data = write_davis(tmp_path / "davis", sequences=1, length=8, height=64, width=96)
    common = ["train", "sparse", "--model", base, "--data", data, "--steps", "2", "--clip-length", "4",
              "--crop", "64x96", "--max-gap", "1", "--tile", "4", "--lr", "0.01"]
    bad = vidseg(*common, "--out", tmp_path / "bad", "--tune", "key,backbone")
    assert bad.code == 2 and "--tune 'backbone'" in bad.stderr
    run = vidseg(*common, "--out", tmp_path / "run", "--tune", "key,decoder")
    assert run.code == 0, run.stderr
    tuned = create_sparse_model(str(base), run.stdout.strip(), "triple")
    plain = create_vos_model(str(base))
    assert tuned.gates.config.tuned == ("key", "decoder")
    assert not torch.equal(tuned.base.heads.decoder.refine4.weight, plain.heads.decoder.refine4.weight)
    assert not torch.equal(tuned.base.heads.key.weight, plain.heads.key.weight)
    assert torch.equal(tuned.base.heads.value.fuse[0].weight, plain.heads.value.fuse[0].weight)  # not tuned
    assert tuned.base.backbone is plain.backbone  # shared, frozen
    resumed = vidseg(*common, "--out", tmp_path / "run", "--tune", "key,decoder", "--resume")  # loads the tuned heads
    assert resumed.code == 0, resumed.stderr


def _tiny_model_files(tmp_path):
    from vidseg_cli.vos.train import save_model

    base, other = tmp_path / "base.safetensors", tmp_path / "other.safetensors"
    torch.manual_seed(0)
    save_model(MemoryNetwork(backbone(), TINY), base)
    save_model(MemoryNetwork(backbone(), TINY), other)
    return base, other


@pytest.mark.slow
def test_train_sparse_writes_gates_that_segment_and_bench_run(vidseg, tmp_path, clip):
    from vidseg_cli.synthetic import write_davis
    from vidseg_cli.vos.sparse.model import create_sparse_model

    base, other = _tiny_model_files(tmp_path)
    data = write_davis(tmp_path / "davis", sequences=1, length=8, height=64, width=96)
    run = vidseg("train", "sparse", "--model", base, "--data", data, "--out", tmp_path / "run", "--steps", "3",
                 "--clip-length", "4", "--crop", "64x96", "--max-gap", "1", "--tile", "4", "--mode", "triple",
                 "--cost", "time")
    assert run.code == 0, run.stderr
    gates = run.stdout.strip()
    log = (tmp_path / "run" / "train.log").read_text()
    assert gates.endswith("gates.safetensors") and "step 3/3" in log and "computed" in log
    assert "layer costs (ms): 0 " in log and "refine4" in log  # measured per gated layer
    loaded = create_sparse_model(str(base), gates, "triple")
    assert isinstance(loaded, SparseModel) and loaded.gates.config.object_aware  # the default
    with pytest.raises(Exception, match="trained for another model"):
        create_sparse_model(str(other), gates, "triple")
    with pytest.raises(Exception, match="for --sparse triple, not static"):
        create_sparse_model(str(base), gates, "static")

    out = tmp_path / "masks"
    segment = vidseg("segment", clip[0], "--mask", clip[1], "--model", base, "--sparse", "triple",
                     "--sparse-gates", gates, "--out", out, "--size", "64", "--json")
    assert segment.code == 0, segment.stderr
    summary = json.loads(segment.stdout)
    assert summary["frames"] == 12 and 0 < summary["computed_share"] <= 1
    assert len(list(out.glob("*.png"))) == 12
    both = vidseg("segment", clip[0], "--mask", clip[1], "--model", base, "--sparse", "triple", "--reuse", "0.5",
                  "--out", tmp_path / "both", "--size", "64")
    assert both.code == 2 and "cannot be combined" in both.stderr

    report = tmp_path / "bench.json"
    bench = vidseg("bench", "--model", base, "--sparse", "none,triple", "--sparse-gates", gates, "--size", "64",
                   "--report", report)
    assert bench.code == 0, bench.stderr
    rows = json.loads(report.read_text())["results"]
    assert [r["sparse"] for r in rows] == ["none", "triple"]
    assert all(r["write_every"] == 5 for r in rows) and rows[0]["computed_share"] == 1.0
    assert "sparse=triple" in rows[1]["config"]

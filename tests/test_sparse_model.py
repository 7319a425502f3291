"""SpVOS in the backbone: the three ways a gated block runs, the session's mixed processing,
`vidseg train sparse` and the --sparse options end to end."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vidseg_cli.models.memnet import MemNetConfig, MemoryNetwork
from vidseg_cli.models.registry import backbone
from vidseg_cli.sparse.gates import COMPUTE, REUSE, SKIP
from vidseg_cli.sparse.model import SparseModel
from vidseg_cli.sparse.network import (
    LayerState,
    Shares,
    SparseConfig,
    SparseGates,
    dense_runner,
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


def _pattern(gates: SparseGates) -> None:
    """Gates pick SKIP, REUSE and COMPUTE in a checkerboard-like pattern of tiles."""
    for gate in gates.gates.values():
        def forward(current, previous, gate=gate):
            rows, cols = current.shape[-2:]
            index = (torch.arange(rows)[:, None] + 2 * torch.arange(cols)[None, :]) % len(gate.policies)
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


def test_sparse_blocks_compute_reuse_and_skip_exactly_where_their_gates_say():
    gates, images = _gates(), _images()
    _pattern(gates)
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
        assert expected <= set(policy.unique().tolist()) or policy.numel() < 3


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
    from vidseg_cli.engine.segment import MemoryOptions, make_bank
    from vidseg_cli.engine.session import VOSSession
    from vidseg_cli.engine.sparse import SparseTracker
    from vidseg_cli.synthetic import frames

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
    from vidseg_cli.memory.bank import Slot

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


def _tiny_model_files(tmp_path):
    from vidseg_cli.train.vos import save_model

    base, other = tmp_path / "base.safetensors", tmp_path / "other.safetensors"
    torch.manual_seed(0)
    save_model(MemoryNetwork(backbone(), TINY), base)
    save_model(MemoryNetwork(backbone(), TINY), other)
    return base, other


def test_train_sparse_writes_gates_that_segment_and_bench_run(vidseg, tmp_path, clip):
    from vidseg_cli.models.registry import create_sparse_model
    from vidseg_cli.synthetic import write_davis

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
    assert isinstance(create_sparse_model(str(base), gates, "triple"), SparseModel)
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
                   "--json", report)
    assert bench.code == 0, bench.stderr
    rows = json.loads(report.read_text())["results"]
    assert [r["sparse"] for r in rows] == ["none", "triple"]
    assert all(r["write_every"] == 5 for r in rows) and rows[0]["computed_share"] == 1.0
    assert "sparse=triple" in rows[1]["config"]

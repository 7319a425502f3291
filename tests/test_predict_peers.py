"""The peer baselines (ConvLSTM, SimVP): their rollouts, training under `vidseg train predict
--arch`, and their one row in `vidseg bench --task predict`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vidseg_cli.predict.data import blob_digits, sequence, write_frames
from vidseg_cli.predict.model import load_predictor, predictor_file
from vidseg_cli.predict.peers import ConvLstm, ConvLstmConfig, SimVP, SimVPConfig

TINY_LSTM = ConvLstmConfig(hidden=8, layers=2)
TINY_SIMVP = SimVPConfig(spatial=8, temporal=16, mixer_blocks=1, frames_in=4, frames_out=4)


def test_convlstm_predicts_every_frame_after_the_first_and_feeds_the_teacher_frames():
    torch.manual_seed(0)
    model = ConvLstm(TINY_LSTM).eval()
    clip = torch.rand(2, 8, 1, 64, 64)
    with torch.no_grad():
        own = model.rollout(clip[:, :5], 3)
        taught = model.rollout(clip[:, :5], 3, truth=clip[:, 5:], teacher=torch.ones(2, 3, dtype=torch.bool))
        seen = model.rollout(clip, 0)  # every input true: the same as teacher forcing throughout
    assert own.shape == (2, 7, 1, 64, 64) and model.first_predicted == 1
    torch.testing.assert_close(taught, seen[:, :7])
    torch.testing.assert_close(own[:, :5], seen[:, :5])  # the observed steps do not depend on the future
    assert not torch.allclose(own[:, 5:], taught[:, 5:])  # after them, its own frames are fed back


def test_simvp_predicts_a_block_at_once_and_rolls_further_in_blocks():
    torch.manual_seed(0)
    model = SimVP(TINY_SIMVP).eval()
    clip = torch.rand(1, 6, 1, 64, 64)
    with torch.no_grad():
        block = model(clip[:, -4:])
        longer = model.rollout(clip, 6)  # 4 from the last 4 observed, then 2 from the last 4 frames so far
        again = model(torch.cat([clip[:, -2:], block[:, :2]], dim=1)[:, -4:])
    assert block.shape == (1, 4, 1, 64, 64) and ((block >= 0) & (block <= 1)).all()
    torch.testing.assert_close(longer[:, :4], block)
    torch.testing.assert_close(longer[:, 4:], model(torch.cat([clip[:, -4:], block], 1)[:, -4:])[:, :2])
    assert again.shape == block.shape
    with pytest.raises(ValueError, match="last 4 frames"):
        model.rollout(clip[:, :3], 4)
    with pytest.raises(ValueError, match="frames_in must equal"):
        SimVPConfig(frames_in=10, frames_out=5)


@pytest.mark.parametrize("network", [ConvLstm(TINY_LSTM), SimVP(TINY_SIMVP)], ids=["convlstm", "simvp"])
def test_a_peer_file_loads_back_as_its_architecture(network, tmp_path):
    tensors, metadata = predictor_file(network)
    save_file(tensors, str(tmp_path / "peer.safetensors"), metadata=metadata)
    loaded = load_predictor(tmp_path / "peer.safetensors")
    assert type(loaded) is type(network) and loaded.config == network.config
    for mine, theirs in zip(loaded.state_dict().values(), network.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, theirs)


@pytest.fixture(scope="module")
def simvp_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("peer") / "simvp.safetensors"
    tensors, metadata = predictor_file(SimVP(SimVPConfig(spatial=8, temporal=16, mixer_blocks=1)))
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_bench_gives_a_peer_one_row_without_memory(vidseg, simvp_file):
    run = vidseg("bench", "--task", "predict", "--model", simvp_file, "--memory", "stremn", "--limit", "2", "--timed", "1", "--json")
    assert run.code == 0, run.stderr
    rows = json.loads(run.stdout)["results"]
    assert [r["config"] for r in rows] == ["copy-last", f"{simvp_file} / none"]
    assert rows[1]["fps"] > 0 and rows[1]["gflops"] > 0 and rows[1]["bank_bytes"] == 0
    assert len(rows[1]["per_horizon"]["mse"]) == 10


def test_predict_with_a_peer_writes_frames_and_refuses_what_it_cannot_do(vidseg, simvp_file, tmp_path):
    frames = sequence(np.random.default_rng(3), blob_digits(20))
    write_frames(frames, tmp_path / "clip")
    run = vidseg("predict", tmp_path / "clip", "--start", "0", "--frames", "4", "--model", simvp_file, "--out", tmp_path / "out", "--json")
    assert run.code == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"{i:05d}.png" for i in range(10, 14)]
    assert json.loads(run.stdout)["memory"] == "none"
    short = vidseg("predict", tmp_path / "clip", "--context", "5", "--model", simvp_file, "--out", tmp_path / "s")
    assert short.code == 2 and "at least 10" in short.stderr and not (tmp_path / "s").exists()
    stream = vidseg("predict", tmp_path / "clip", "--stream", "--model", simvp_file)
    assert stream.code == 2 and "predict-simvp baseline" in stream.stderr


def test_train_predict_arch_trains_a_peer_and_refuses_stremn_shape_flags(vidseg, digits_file, tmp_path):
    out = tmp_path / "run"
    run = vidseg("train", "predict", "--digits", digits_file, "--out", out, "--arch", "convlstm", "--steps", "1",
                 "--batch", "2", "--val-every", "1", "--val-sequences", "1", "--device", "cpu")
    assert run.code == 0, run.stderr
    assert type(load_predictor(out / "predictor.safetensors")) is ConvLstm
    assert json.loads((out / "config.json").read_text())["gradient_weight"] == 0  # the peers' own recipe: squared error alone
    refused = vidseg("train", "predict", "--digits", digits_file, "--out", tmp_path / "b", "--arch", "simvp", "--width", "8")
    assert refused.code == 2 and "--arch simvp" in refused.stderr and not (tmp_path / "b").exists()
    unknown = vidseg("train", "predict", "--digits", digits_file, "--out", tmp_path / "c", "--arch", "prednet")
    assert unknown.code == 2 and "prednet" in unknown.stderr
    headless = vidseg("train", "predict", "--digits", digits_file, "--out", tmp_path / "d", "--commit", "fed")
    assert headless.code == 2 and "--shift-radius" in headless.stderr and not (tmp_path / "d").exists()

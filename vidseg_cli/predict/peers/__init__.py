"""Peer predictors, written small from their papers, for side-by-side baselines at an equal
training budget (`vidseg train predict --arch`, `vidseg bench --task predict`).

Each peer is one module with a frozen config dataclass and an ``nn.Module`` that speaks the
predictor protocol of ``predict/model.py``: ``config`` (``channels``, ``frame_height``,
``frame_width``, ``to_json``), ``first_predicted`` (the first frame index its rollout
returns) and ``rollout(observed, future, banks, truth, teacher)``. Peers hold no memory
bank: ``banks`` must be None.
"""

from vidseg_cli.predict.peers.convlstm import ConvLstm, ConvLstmConfig
from vidseg_cli.predict.peers.simvp import SimVP, SimVPConfig

PEERS = {"convlstm": (ConvLstm, ConvLstmConfig), "simvp": (SimVP, SimVPConfig)}

__all__ = ["PEERS", "ConvLstm", "ConvLstmConfig", "SimVP", "SimVPConfig"]

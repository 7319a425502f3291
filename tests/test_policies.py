"""Each update policy picks the documented slots, on constructed similarities."""

import pytest
import torch

from vidseg_cli.memory.bank import MemoryBank
from vidseg_cli.memory.policies import FIFO, STM, FirstLast, STReMN, make_policy
from vidseg_cli.memory.slot import Slot


def slot(frame: int, permanent: bool = False) -> Slot:
    return Slot(key=torch.zeros(1, 1, 1), value=torch.zeros(1, 1, 1), frame=frame, permanent=permanent)


def bank_slots(*frames: int, permanent: tuple[int, ...] = (0,)) -> list[Slot]:
    return [slot(f, f in permanent) for f in frames]


def matrix_similarity(values: dict[tuple[int, int], float]):
    def similarity(i: int, j: int) -> float:
        return values.get((i, j), 0.5)

    return similarity


NO_SIM = matrix_similarity({})


def test_stremn_waits_until_full():
    assert STReMN(slots=5).plan(bank_slots(0, 1, 2, 3), NO_SIM).drop == []


def test_rule_a_drops_oldest_non_permanent_into_its_newer_neighbour():
    plan = STReMN(slots=5, rule="A").plan(bank_slots(0, 1, 2, 3, 4), NO_SIM)
    assert plan.drop == [1] and plan.fuse == [(1, 2)]


def test_rule_b_drops_newest_into_its_older_neighbour():
    plan = STReMN(slots=5, rule="B").plan(bank_slots(0, 1, 2, 3, 4), NO_SIM)
    assert plan.drop == [4] and plan.fuse == [(4, 3)]


def test_rule_c_picks_least_similar_pair_and_drops_the_older():
    sims = matrix_similarity({(1, 3): 0.1, (2, 4): 0.2, (1, 2): 0.9})
    plan = STReMN(slots=5, rule="C").plan(bank_slots(0, 1, 2, 3, 4), sims)
    assert plan.drop == [1] and plan.fuse == [(1, 3)]


def test_rule_d_picks_most_similar_pair_and_drops_the_older():
    sims = matrix_similarity({(2, 3): 0.95, (1, 4): 0.9, (0, 1): 0.99})
    # (0, 1) is most similar, but 0 is permanent: slot 1 is dropped into slot 0
    plan = STReMN(slots=5, rule="D").plan(bank_slots(0, 1, 2, 3, 4), sims)
    assert plan.drop == [1] and plan.fuse == [(1, 0)]


def test_rule_d_without_permanent_in_pair():
    sims = matrix_similarity({(2, 3): 0.95, (1, 4): 0.9})
    plan = STReMN(slots=5, rule="D").plan(bank_slots(0, 1, 2, 3, 4), sims)
    assert plan.drop == [2] and plan.fuse == [(2, 3)]


def test_pairs_of_two_permanent_slots_are_never_chosen():
    sims = matrix_similarity({(0, 1): 0.0, (2, 3): 0.3})
    plan = STReMN(slots=4, rule="C").plan(bank_slots(0, 5, 6, 7, permanent=(0, 5)), sims)
    assert plan.drop == [2] and plan.fuse == [(2, 3)]


def test_stm_keeps_every_nth_and_drops_the_previous_otherwise():
    policy = STM(every=5)
    assert policy.plan(bank_slots(0, 3), NO_SIM).drop == [1]
    assert policy.plan(bank_slots(0, 5), NO_SIM).drop == []
    assert policy.plan(bank_slots(0), NO_SIM).drop == []


def test_first_last_keeps_only_permanent():
    assert FirstLast().plan(bank_slots(0, 7, permanent=(0,)), NO_SIM).drop == [1]


def test_fifo_keeps_last_k():
    assert FIFO(slots=3).plan(bank_slots(0, 1, 2, 3), NO_SIM).drop == [1]
    assert FIFO(slots=3).plan(bank_slots(0, 1, 2), NO_SIM).drop == []


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown memory policy"):
        make_policy("lstm")


def _grow(policy_name: str, frames: int, **kw) -> list[int]:
    bank = MemoryBank(make_policy(policy_name, **kw))
    sizes = []
    for f in range(frames):
        key = torch.nn.functional.normalize(torch.randn(4, 3, 3), dim=0)
        bank.write(Slot(key=key, value=torch.rand(1, 3, 3), frame=f, permanent=f == 0))
        sizes.append(len(bank))
    return sizes


def test_bank_sizes_per_policy():
    assert max(_grow("stremn", 40, slots=5)) == 5
    assert _grow("first-last", 10)[-1] == 2
    assert _grow("fifo", 20, slots=3)[-1] == 4  # permanent + 3
    stm = _grow("stm", 41, every=5)
    # frame 0 + frames 5, 10, ..., 40 + nothing else at frame 40 (it is a 5th frame)
    assert stm[-1] == 9 and stm[21] == 6  # 0, 5, 10, 15, 20 and the previous frame 21


def test_bank_similarity_cache_follows_fusion():
    calls = []

    def fusion(source, target):
        calls.append((source.frame, target.frame))
        return target

    bank = MemoryBank(make_policy("stremn", slots=3, update="A"), fusion=fusion)
    for f in range(6):
        bank.write(Slot(key=torch.ones(2, 1, 1), value=torch.ones(1, 1, 1), frame=f, permanent=f == 0))
    assert [s.frame for s in bank.slots] == [0, 4, 5]
    assert calls == [(1, 2), (2, 3), (3, 4)]
    assert bank.slots[1].fused == 1

"""Memory update policies: which slots to drop (and fuse) before the newest frame is written.

A policy only plans; the MemoryBank carries the plan out. Slots are indexed in write
order (0 = oldest). Permanent slots (frames with a user mask) are never dropped.

| name       | keeps                                                       | size     |
|------------|-------------------------------------------------------------|----------|
| stremn     | K slots; when full, update rule A/B/C/D picks one to fuse+drop | constant |
| stm        | permanent frames + every N-th frame + the previous frame    | grows    |
| first-last | permanent frames + the previous frame                       | constant |
| fifo       | permanent frames + the last K frames                        | constant |
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from vidseg_cli.memory.slot import Slot
from vidseg_cli.options import POLICIES, UPDATE_RULES  # noqa: F401 - re-exported

Similarity = Callable[[int, int], float]


@dataclass(frozen=True)
class Plan:
    """Slot indices to drop, and (source, target) pairs to fuse before dropping."""

    drop: list[int] = field(default_factory=list)
    fuse: list[tuple[int, int]] = field(default_factory=list)


class Policy(Protocol):
    def plan(self, slots: Sequence[Slot], similarity: Similarity) -> Plan: ...


@dataclass(frozen=True)
class STReMN:
    """Constant K slots (including the newest); rules A-D from STReMN section 3.2.

    A: drop the oldest non-permanent slot; B: drop the newest one (the previous frame);
    C: the least-similar pair (i < j); D: the most-similar pair. A and B fuse the dropped
    slot into its nearest non-permanent neighbour in time; C and D fuse it into the other
    slot of the pair. Within a pair the older non-permanent slot is the one dropped.
    """

    slots: int = 5
    rule: str = "C"

    def plan(self, slots: Sequence[Slot], similarity: Similarity) -> Plan:
        if len(slots) < self.slots:
            return Plan()
        free = [i for i, s in enumerate(slots) if not s.permanent]
        if not free:
            return Plan()
        if self.rule in ("A", "B"):
            drop = free[0] if self.rule == "A" else free[-1]
            partner = _neighbour(slots, drop, prefer_newer=self.rule == "A")
        else:
            drop, partner = self._pick_pair(slots, similarity)
        fuse = [(drop, partner)] if partner is not None else []
        return Plan(drop=[drop], fuse=fuse)

    def _pick_pair(self, slots: Sequence[Slot], similarity: Similarity) -> tuple[int, int]:
        pairs = [
            (i, j)
            for i, j in itertools.combinations(range(len(slots)), 2)
            if not (slots[i].permanent and slots[j].permanent)
        ]
        choose = min if self.rule == "C" else max
        i, j = choose(pairs, key=lambda pair: similarity(*pair))
        return (i, j) if not slots[i].permanent else (j, i)


def _neighbour(slots: Sequence[Slot], index: int, prefer_newer: bool) -> int | None:
    """The closest other slot in time, non-permanent ones first."""
    others = [i for i in range(len(slots)) if i != index]
    if not others:
        return None
    order = sorted(
        others,
        key=lambda i: (slots[i].permanent, abs(i - index), (i < index) == prefer_newer),
    )
    return order[0]


@dataclass(frozen=True)
class STM:
    """Space-Time Memory's schedule: permanent frames, every N-th frame, the previous one."""

    every: int = 5

    def plan(self, slots: Sequence[Slot], similarity: Similarity) -> Plan:
        if slots and not slots[-1].permanent and slots[-1].frame % self.every != 0:
            return Plan(drop=[len(slots) - 1])
        return Plan()


@dataclass(frozen=True)
class FirstLast:
    """Permanent frames plus the previous frame."""

    def plan(self, slots: Sequence[Slot], similarity: Similarity) -> Plan:
        return Plan(drop=[i for i, s in enumerate(slots) if not s.permanent])


@dataclass(frozen=True)
class FIFO:
    """Permanent frames plus the last K frames (TMANet / LMANet)."""

    slots: int = 5

    def plan(self, slots: Sequence[Slot], similarity: Similarity) -> Plan:
        free = [i for i, s in enumerate(slots) if not s.permanent]
        excess = len(free) + 1 - self.slots
        return Plan(drop=free[:excess]) if excess > 0 else Plan()


def make_policy(name: str, slots: int = 5, update: str = "C", every: int = 5) -> Policy:
    """Build a policy by its --memory name."""
    if name == "stremn":
        return STReMN(slots=slots, rule=update)
    if name == "stm":
        return STM(every=every)
    if name == "first-last":
        return FirstLast()
    if name == "fifo":
        return FIFO(slots=slots)
    raise ValueError(f"unknown memory policy {name!r}; choose from {', '.join(POLICIES)}")

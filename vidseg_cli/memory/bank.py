"""The per-video memory: slots of (key, value) written frame by frame, pruned by a policy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from vidseg_cli.memory.policies import Policy
from vidseg_cli.memory.similarity import pooled_key, similarity_of_pooled
from vidseg_cli.memory.slot import Slot


class FusionCell(Protocol):
    """Distills a slot that is about to be dropped into its partner (STReMN eqs 3-8)."""

    def __call__(self, source: Slot, target: Slot) -> Slot: ...


class BatchFusionCell(FusionCell, Protocol):
    """A cell that can also fuse many (source, target) pairs in one call."""

    def many(self, pairs: Sequence[tuple[Slot, Slot]]) -> list[Slot]: ...


@dataclass
class MemoryBank:
    """Slots in write order; the policy decides what to drop and fuse before each write.

    Pairwise similarities (eqs 1-2) are cached and refreshed only for slots that change,
    because recomputing all K^2 pairs every frame would dominate the frame time.
    """

    policy: Policy
    fusion: FusionCell | None = None
    slots: list[Slot] = field(default_factory=list)
    _sims: dict[tuple[int, int], float] = field(default_factory=dict, repr=False)
    _pooled: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def write(self, slot: Slot) -> None:
        """Make room as the policy says, then append ``slot`` (the newest is always kept)."""
        plan = self.policy.plan(self.slots, self.similarity)
        for source, target in plan.fuse:
            if self._fusible(target):
                self._replace(target, self.fusion(self.slots[source], self.slots[target]))
        self._drop_and_append(plan.drop, slot)

    def _fusible(self, target: int) -> bool:
        return self.fusion is not None and not self.slots[target].permanent

    def _replace(self, target: int, fused: Slot) -> None:
        old = self.slots[target]
        self._forget(old.uid)
        self.slots[target] = replace(fused, fused=old.fused + 1)

    def _drop_and_append(self, drop: Sequence[int], slot: Slot) -> None:
        for index in sorted(drop, reverse=True):
            self._forget(self.slots[index].uid)
            del self.slots[index]
        self.slots.append(slot)

    def similarity(self, i: int, j: int) -> float:
        """S(X_i, X_j) of STReMN eq 1, cached per pair of slot objects."""
        a, b = self.slots[i], self.slots[j]
        cache_key = (a.uid, b.uid)
        if cache_key not in self._sims:
            self._sims[cache_key] = similarity_of_pooled(self._pooled_key(a), self._pooled_key(b))
        return self._sims[cache_key]

    def _pooled_key(self, slot: Slot) -> torch.Tensor:
        if slot.uid not in self._pooled:
            self._pooled[slot.uid] = pooled_key(slot.key.detach())  # a choice, not a gradient path
        return self._pooled[slot.uid]

    def _forget(self, uid: int) -> None:
        self._pooled.pop(uid, None)
        for pair in [p for p in self._sims if uid in p]:
            del self._sims[pair]

    def copy(self) -> MemoryBank:
        """A bank that writes apart from this one (slots are shared until replaced)."""
        return replace(self, slots=list(self.slots), _sims=dict(self._sims), _pooled=dict(self._pooled))

    @property
    def nbytes(self) -> int:
        return sum(slot.nbytes for slot in self.slots)

    def __len__(self) -> int:
        return len(self.slots)


def write_all(banks: Sequence[MemoryBank], slots: Sequence[Slot]) -> None:
    """``bank.write(slot)`` for every bank (the videos of a training batch), with every
    bank's fusion done in one call of their shared cell: one fusion per bank per frame
    through a small CNN is dominated by per-call overhead. Each bank's policy still picks
    its own slots."""
    fusion = banks[0].fusion if banks else None
    plans = [bank.policy.plan(bank.slots, bank.similarity) for bank in banks]
    batchable = (
        hasattr(fusion, "many")
        and all(bank.fusion is fusion for bank in banks)
        and all(len(plan.fuse) <= 1 for plan in plans)
    )
    if not batchable:
        for bank, slot in zip(banks, slots, strict=True):
            bank.write(slot)
        return
    jobs = [(bank, target) for bank, plan in zip(banks, plans) for _, target in plan.fuse if bank._fusible(target)]
    pairs = [(bank.slots[source], bank.slots[target]) for bank, plan in zip(banks, plans) for source, target in plan.fuse if bank._fusible(target)]
    for (bank, target), fused in zip(jobs, fusion.many(pairs) if pairs else [], strict=True):
        bank._replace(target, fused)
    for bank, plan, slot in zip(banks, plans, slots, strict=True):
        bank._drop_and_append(plan.drop, slot)

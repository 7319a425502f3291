"""Memory read (STM-style attention, STReMN eq 10) over all slots of a bank.

Permanent slots (user masks) are matched globally, so an object that reappears anywhere
is found again; other slots are matched in a local window, since they were written a few
frames ago and objects move little in between. Candidates of all slots are merged, the
global top-k is kept, and each object is read only from the slots that knew it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vidseg_cli.memory.attention import global_match, local_match, top_k, window_covers_map
from vidseg_cli.memory.slot import Slot


@dataclass(frozen=True)
class ReadConfig:
    topk: int = 10
    radius: int = 8  # local window radius, in feature pixels
    temperature: float = 0.07  # softmax temperature over cosine similarities
    # Permanent slots are matched against memory average-pooled by this factor: the
    # global match is the costliest step (HW x HW), and recent slots, matched at full
    # resolution in their windows, already supply the fine detail.
    global_pool: int = 1


def read_memory(query: torch.Tensor, slots: Sequence[Slot], objects: int, config: ReadConfig) -> torch.Tensor:
    """query: (C, H, W) unit-norm key. Returns (objects, H, W) probabilities."""
    c, h, w = query.shape
    sims, values, valid = [], [], []
    for s, v, known in _candidates(query, slots, objects, config):
        sims.append(s)
        values.append(v)
        valid.append(known.expand(s.shape[1], objects))
    sims_all = torch.cat(sims, dim=1)  # (N, M)
    values_all = torch.cat(values, dim=1)  # (N, M, O)
    valid_all = torch.cat(valid, dim=0)  # (M, O)
    k = min(config.topk, sims_all.shape[1])
    top, index = sims_all.topk(k, dim=1)
    weights = torch.softmax(top / config.temperature, dim=1).unsqueeze(2)  # (N, k, 1)
    picked = torch.gather(values_all, 1, index.unsqueeze(2).expand(-1, -1, objects))
    known = valid_all[index]  # (N, k, O)
    numerator = (weights * known * picked).sum(1)
    denominator = (weights * known).sum(1).clamp_min(1e-6)
    return (numerator / denominator).t().reshape(objects, h, w)


def _candidates(query: torch.Tensor, slots: Sequence[Slot], objects: int, config: ReadConfig):
    """Yields (sims (N, k), values (N, k, O), known (O,)) per batch of slots.

    Globally matched slots that know the same objects are matched together, as one
    memory of their concatenated pixels: with hundreds of small slots (stm on a long
    video) one matmul instead of one per slot is ~10x faster. Slots matched locally
    are compute-bound and go one by one.
    """
    batches: dict[tuple[bool, int], list[Slot]] = {}
    covers = window_covers_map(query.shape[-2:], config.radius)
    for slot in slots:
        known = slot.value.shape[0]
        if slot.permanent or covers:
            batches.setdefault((slot.permanent, known), []).append(slot)
            continue
        s, v = local_match(query, slot.key, _pad_objects(slot.value, objects), config.topk, config.radius)
        yield s, v, _known(known, objects, v)
    for (permanent, known), batch in batches.items():
        pool = config.global_pool if permanent else 1
        step = max(1, _GLOBAL_CHUNK // (query[0].numel() * batch[0].key[0].numel()))
        for first in range(0, len(batch), step):
            key, value = _concatenated(batch[first : first + step], objects, pool)
            s, v = global_match(query, key, value, config.topk)
            yield s, v, _known(known, objects, v)


_GLOBAL_CHUNK = 1 << 24  # affinity entries per batched global match (64 MB of float32)


def _concatenated(batch: Sequence[Slot], objects: int, pool: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots -> one (C, 1, M) key and (O, 1, M) value over all their pixels."""
    pairs = [_pooled(slot.key, _pad_objects(slot.value, objects), pool) for slot in batch]
    key = torch.cat([k.flatten(1) for k, _ in pairs], dim=1)
    value = torch.cat([v.flatten(1) for _, v in pairs], dim=1)
    return key.unsqueeze(1), value.unsqueeze(1)


def _known(known: int, objects: int, like: torch.Tensor) -> torch.Tensor:
    return (torch.arange(objects, device=like.device) < known).to(like.dtype)


def _pooled(key: torch.Tensor, value: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    if factor <= 1:
        return key, value
    key = F.normalize(F.avg_pool2d(key[None], factor, ceil_mode=True)[0], dim=0)
    return key, F.avg_pool2d(value[None], factor, ceil_mode=True)[0]


def _pad_objects(value: torch.Tensor, objects: int) -> torch.Tensor:
    """Zero channels for objects that joined after this slot was written."""
    missing = objects - value.shape[0]
    if missing <= 0:
        return value
    return torch.cat([value, value.new_zeros(missing, *value.shape[1:])])


def attend(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    known: torch.Tensor | None,
    topk: int,
    scale: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """STM memory read (STReMN eq 10) with learned keys, batched and differentiable.

    query (B, C, N) and keys (B, C, M); values (B, O, D, M); known (B, O, M) marks memory
    pixels whose slot knew each object (None: all did). Affinity is the negative squared
    L2 distance (STCN: better than the dot product for learned keys) times ``scale``
    (default 1/sqrt(C)), softmax over the ``topk`` best memory pixels (0: all).
    Returns (B, O, D, N).
    """
    if scale is None:
        scale = query.shape[1] ** -0.5
    # (2 q.k - |k|^2) * scale as one batched multiply-add: the scale goes on the small
    # factors (B C N, B 1 M), not on the B N M affinity, whose elementwise passes would
    # cost as much as the matmul itself.
    bias = keys.pow(2).sum(1, keepdim=True) * -scale  # (B, 1, M)
    b, m, n = keys.shape[0], keys.shape[2], query.shape[2]
    if known is None and not 0 < topk < m:
        # Every memory pixel, all known: laid out (B, M, N) so that the softmax, the read
        # (values (B, O D, M) @ weights) and their gradients all run on contiguous memory;
        # in (B, N, M) the backward pass copies the transposed B N M gradient.
        affinity_t = torch.baddbmm(bias.transpose(1, 2), keys.transpose(1, 2), (2 * scale) * query)  # (B, M, N)
        weights = torch.softmax(affinity_t, dim=1)
        return (values.flatten(1, 2) @ weights).view(b, *values.shape[1:3], n)
    # The bias as one more channel of the product: baddbmm would first copy the broadcast
    # bias into the whole B N M output, a pass that costs half as much as the matmul.
    ones = query.new_ones(b, 1, n)
    affinity = torch.bmm(torch.cat([(2 * scale) * query, ones], 1).transpose(1, 2), torch.cat([keys, bias], 1))  # (B, N, M)
    if not 0 < topk < m:  # every memory pixel: one matmul, no gather of D x N x M values
        weights = torch.exp(affinity - affinity.amax(dim=2, keepdim=True)).unsqueeze(1)  # (B, 1, N, M)
        if known is not None:
            weights = weights * known.unsqueeze(2).to(weights.dtype)  # (B, O, N, M)
        weights = weights / weights.sum(dim=3, keepdim=True).clamp_min(1e-8)
        return values @ weights.expand(-1, values.shape[1], -1, -1).transpose(2, 3)  # (B, O, D, N)
    top, index = top_k(affinity, topk)
    weights = torch.exp(top - top.amax(dim=2, keepdim=True)).unsqueeze(1)  # (B, 1, N, k)
    flat = index.flatten(1)  # (B, N*k)
    if known is not None:
        weights = weights * torch.gather(known, 2, flat.unsqueeze(1).expand(-1, known.shape[1], -1)).view(
            b, -1, n, index.shape[2]
        )
    weights = weights / weights.sum(dim=3, keepdim=True).clamp_min(1e-8)
    o, d = values.shape[1:3]
    picked = torch.gather(values.flatten(1, 2), 2, flat.unsqueeze(1).expand(-1, o * d, -1))
    picked = picked.view(b, o, d, n, index.shape[2])
    return (picked * weights.unsqueeze(2)).sum(dim=4)


def read_values(
    query: torch.Tensor, slots: Sequence[Slot], objects: int, topk: int, scale: float | torch.Tensor | None = None
) -> torch.Tensor:
    """Learned-model read over all slots: query (C, h, w); slot values (O_s, D, h, w).

    Returns (objects, D, h, w); each object is read only from the slots that knew it.
    """
    return read_values_many(query[None], [slots], objects, topk, scale)[0]


def read_values_many(
    queries: torch.Tensor,
    memories: Sequence[Sequence[Slot]],
    objects: int,
    topk: int,
    scale: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """``read_values`` for B videos at once, in one batched attention: queries (B, C, h, w),
    one list of slots per video, all with the same number of memory pixels (the banks of
    a training batch). Returns (B, objects, D, h, w)."""
    b, c, h, w = queries.shape
    keys, values, known = zip(*(_flattened(slots, objects) for slots in memories), strict=True)
    everyone_known = all(slot.value.shape[0] >= objects for slots in memories for slot in slots)
    known_all = None if everyone_known else torch.stack(known)
    out = attend(queries.flatten(2), torch.stack(keys), torch.stack(values), known_all, topk, scale)
    return out.view(b, objects, -1, h, w)


def _flattened(slots: Sequence[Slot], objects: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A video's memory as keys (C, M), values (O, D, M) and known (O, M)."""
    keys = torch.cat([slot.key.flatten(1) for slot in slots], dim=1)
    values = torch.cat([_pad_objects(slot.value, objects).flatten(2) for slot in slots], dim=2)
    known = torch.cat(
        [_known(slot.value.shape[0], objects, keys)[:, None].expand(-1, slot.key[0].numel()) for slot in slots], dim=1
    )
    return keys, values, known

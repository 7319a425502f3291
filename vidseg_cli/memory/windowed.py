"""Differentiable memory attention over T memory frames with a softmax over every candidate:
within a local window (LMANet eqs 3-5) or over the whole map (TMANet eq 1).

Unlike ``attention.py``'s top-k matching (segment's propagation read), every candidate
gets a weight and gradients reach every key and value, which training the semseg memory
layers needs. Affinity is the scaled dot product of learned keys, as both papers use.
"""

from __future__ import annotations

import functools

import torch

# A band's affinity holds at most this many (query, memory) pairs; wider bands are faster
# (fewer, larger matmuls) until they outgrow the caches.
BAND_PAIRS = 2**24


def windowed_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, radius: int, scale: float | torch.Tensor,
    rows: int | None = None,
) -> torch.Tensor:
    """LMANet's local memory attention.

    query (B, C, H, W); keys (B, T, C, H, W); values (B, T, D, H, W). For each position,
    the (2R+1)^2 memory positions around it in each of the T frames are candidates (eq 3);
    one softmax over window and time (eq 4) weights their values (eq 5). Positions beyond
    the border are not candidates. Returns (B, D, H, W).

    Computed in bands of ``rows`` query rows (default R): a band's candidates lie in its
    own rows and R rows either side, so each band scores only those memory rows, and the
    pairs among them that lie outside the window are masked. At 480x352, T=3, R=4 this read
    took 1.6 ms, the whole map masked 3.2 ms, and gathering (2R+1)^2 shifted copies of every
    value 60 ms.
    """
    b, t, c, h, w = keys.shape
    d = values.shape[2]
    rows = rows or _band_rows(t, w, radius)
    queries = query * scale
    bands = []
    for top in range(0, h, rows):
        bottom = min(h, top + rows)
        first, last = max(0, top - radius), min(h, bottom + radius)
        # (B, C, M) and (B, M, D) over the band's memory rows, frame-major; contiguous copies
        # (channels-last strides send bmm to a slow path)
        memory_keys = keys[:, :, :, first:last].permute(0, 2, 1, 3, 4).reshape(b, c, -1).contiguous()
        memory_values = values[:, :, :, first:last].permute(0, 1, 3, 4, 2).reshape(b, -1, d).contiguous()
        band = queries[:, :, top:bottom].permute(0, 2, 3, 1).reshape(b, -1, c).contiguous()  # (B, N, C)
        affinity = torch.bmm(band, memory_keys)  # (B, N, M)
        affinity.masked_fill_(_outside_window(t, w, radius, top, bottom, first, last, query.device), float("-inf"))
        weights = torch.softmax(affinity, dim=-1)  # over window and time: a contiguous last dimension
        bands.append(torch.bmm(weights, memory_values).transpose(1, 2).reshape(b, d, bottom - top, w))
    return torch.cat(bands, dim=2)


def _band_rows(t: int, w: int, radius: int) -> int:
    rows = max(1, radius)
    while rows > 1 and rows * w * (rows + 2 * radius) * w * t > BAND_PAIRS:
        rows //= 2
    return rows


@functools.lru_cache(maxsize=64)  # a few bands per frame size and radius a video meets; built once
def _outside_window(
    t: int, w: int, radius: int, top: int, bottom: int, first: int, last: int, device: torch.device
) -> torch.Tensor:
    """(N, M) bool for the band of query rows top..bottom-1 against memory rows
    first..last-1 of T frames (frame-major): the memory position lies outside ``radius``
    of the query position on either axis. Built as a normal tensor even under inference
    mode: the cache outlives the call, and an inference tensor would break a later training
    step."""
    with torch.inference_mode(False):
        query_y, memory_y, x = (torch.arange(a, z, device=device) for a, z in ((top, bottom), (first, last), (0, w)))
        far_y = (query_y[:, None] - memory_y[None, :]).abs() > radius
        far_x = (x[:, None] - x[None, :]).abs() > radius
        far = far_y[:, None, :, None] | far_x[None, :, None, :]  # (query y, query x, memory y, memory x)
        return far.reshape((bottom - top) * w, (last - first) * w).repeat(1, t)


def global_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    """TMANet's temporal memory attention (eq 1): every position of every memory frame is a
    candidate. Shapes as ``windowed_attention``."""
    b, t, c, h, w = keys.shape
    d = values.shape[2]
    # Contiguous operands: keys and values written by a network running channels-last come
    # with strides that send bmm to a slow strided path (38 ms instead of ~1 ms at 480x352).
    memory_keys = keys.permute(0, 2, 1, 3, 4).reshape(b, c, t * h * w).contiguous()  # (B, C, M)
    memory_values = values.permute(0, 1, 3, 4, 2).reshape(b, t * h * w, d).contiguous()  # (B, M, D)
    queries = (query * scale).permute(0, 2, 3, 1).reshape(b, h * w, c).contiguous()  # scale on the small factor
    weights = torch.softmax(torch.bmm(queries, memory_keys), dim=-1)  # (B, N, M)
    return torch.bmm(weights, memory_values).transpose(1, 2).reshape(b, d, h, w)

"""Differentiable memory attention over T memory frames with a softmax over every candidate:
within a local window (LMANet eqs 3-5) or over the whole map (TMANet eq 1).

Unlike ``attention.py``'s top-k matching (segment's propagation read), every candidate
gets a weight and gradients reach every key and value, which training the semseg memory
layers needs. Affinity is the scaled dot product of learned keys, as both papers use.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

TILE = (4, 8)  # query positions a tile: each scores (4+2R)(8+2R) memory positions, 2.4 times its window at R=4


def windowed_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, radius: int, scale: float | torch.Tensor,
    tile: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LMANet's local memory attention.

    query (B, C, H, W); keys (B, T, C, H, W); values (B, T, D, H, W). For each position,
    the (2R+1)^2 memory positions around it in each of the T frames are candidates (eq 3);
    one softmax over window and time (eq 4) weights their values (eq 5). Positions beyond
    the border are not candidates. Returns the values read (B, D, H, W) and each
    position's best score (B, 1, H, W): how well its best candidate matched, which tells a
    reader whether anything in the window is the same thing.

    Computed in tiles of ``tile`` query positions (default ``TILE``): a tile's candidates
    lie in its own positions and R either side, so each tile scores only that block of
    memory (one batched matmul over all tiles), and the pairs in it that lie outside the
    window are masked. At 640x480 (stride 8, T=3, R=4, 40 key channels) bands of 4 whole
    rows took 29 ms, because each query scored 12 rows of the frame, 12 times its window;
    gathering (2R+1)^2 shifted copies of every value took 60 ms at 480x352.
    """
    b, t, c, h, w = keys.shape
    d = values.shape[2]
    th, tw = (min(side, n) for side, n in zip(tile or TILE, (h, w), strict=True))
    rows, cols = -(-h // th), -(-w // tw)
    pad_h, pad_w = rows * th - h, cols * tw - w
    kh, kw = th + 2 * radius, tw + 2 * radius
    tiles = b * rows * cols
    queries = F.pad(query * scale, (0, pad_w, 0, pad_h))  # scale on the small factor
    queries = queries.reshape(b, c, rows, th, cols, tw).permute(0, 2, 4, 3, 5, 1).reshape(tiles, th * tw, c)
    # keys as (tiles, C, T*kh*kw), values as (tiles, T*kh*kw, D): the bmm operands' layouts
    memory_keys = _blocks(keys, radius, pad_h, pad_w, (th, tw), channels_last=False).reshape(tiles, c, t * kh * kw)
    memory_values = _blocks(values, radius, pad_h, pad_w, (th, tw), channels_last=True).reshape(tiles, t * kh * kw, d)
    affinity = torch.bmm(queries, memory_keys).view(b, rows * cols, th * tw, t * kh * kw)
    affinity.masked_fill_(_not_candidates(t, h, w, radius, th, tw, query.device), float("-inf"))
    affinity = affinity.view(tiles, th * tw, -1)
    peak = affinity.amax(-1).view(b, rows, cols, th, tw).permute(0, 1, 3, 2, 4).reshape(b, 1, rows * th, cols * tw)
    weights = torch.softmax(affinity, dim=-1)  # over window and time
    out = torch.bmm(weights, memory_values)  # (tiles, th*tw, D)
    out = out.view(b, rows, cols, th, tw, d).permute(0, 5, 1, 3, 2, 4).reshape(b, d, rows * th, cols * tw)
    return out[:, :, :h, :w], peak[:, :, :h, :w]


def _blocks(memory: torch.Tensor, radius: int, pad_h: int, pad_w: int, tile: tuple[int, int], channels_last: bool) -> torch.Tensor:
    """(B, T, D, H, W) -> each tile's block of memory, R either side of it (zeros beyond
    the border, masked by ``_not_candidates``): (B, rows, cols, D, T, kh, kw), or with
    ``channels_last`` (B, rows, cols, T, kh, kw, D). The blocks overlap, so they are a
    strided view of the padded memory and one copy makes them: unfold and a permute
    after it took 15 ms for what this does in 1."""
    (th, tw), (b, t, d, h, w) = tile, memory.shape
    rows, cols = (h + pad_h) // th, (w + pad_w) // tw
    kh, kw = th + 2 * radius, tw + 2 * radius
    padded = F.pad(memory, (radius, radius + pad_w, radius, radius + pad_h)).contiguous()  # as_strided needs it
    if channels_last:
        padded = padded.permute(0, 1, 3, 4, 2).contiguous()  # (B, T, Hp, Wp, D)
        sb, st, sy, sx, sd = padded.stride()
        return padded.as_strided((b, rows, cols, t, kh, kw, d), (sb, th * sy, tw * sx, st, sy, sx, sd))
    sb, st, sd, sy, sx = padded.stride()
    return padded.as_strided((b, rows, cols, d, t, kh, kw), (sb, th * sy, tw * sx, sd, st, sy, sx))


@functools.lru_cache(maxsize=64)  # one per frame size, radius and tile a video meets; built once
def _not_candidates(t: int, h: int, w: int, radius: int, th: int, tw: int, device: torch.device) -> torch.Tensor:
    """(tiles, th*tw, T*kh*kw) bool: the memory position lies outside ``radius`` of the
    query position on either axis, or beyond the border. A padding query (beyond the
    border itself, cropped away) keeps every candidate, so that its softmax stays finite
    and no NaN reaches a gradient. Built as a normal tensor even under inference mode: the
    cache outlives the call, and an inference tensor would break a later training step."""
    with torch.inference_mode(False):
        rows, cols = -(-h // th), -(-w // tw)
        kh, kw = th + 2 * radius, tw + 2 * radius

        def axis(tiles: int, extent: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
            """Per tile along one axis: (tiles, extent) query coordinates, (tiles, block) memory ones."""
            start = torch.arange(tiles, device=device)[:, None] * extent
            return start + torch.arange(extent, device=device), start - radius + torch.arange(block, device=device)

        qy, my = axis(rows, th, kh)
        qx, mx = axis(cols, tw, kw)
        far_y = ((qy[:, :, None] - my[:, None, :]).abs() > radius) | ((my < 0) | (my >= h))[:, None, :]  # (rows, th, kh)
        far_x = ((qx[:, :, None] - mx[:, None, :]).abs() > radius) | ((mx < 0) | (mx >= w))[:, None, :]  # (cols, tw, kw)
        far = far_y[:, None, :, None, :, None] | far_x[None, :, None, :, None, :]  # (rows, cols, th, tw, kh, kw)
        padding = (qy >= h)[:, None, :, None] | (qx >= w)[None, :, None, :]  # (rows, cols, th, tw)
        far = far & ~padding[..., None, None]
        return far.reshape(rows * cols, th * tw, 1, kh * kw).expand(-1, -1, t, -1).reshape(rows * cols, th * tw, t * kh * kw)


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
    affinity = torch.bmm(queries, memory_keys)  # (B, N, M)
    peak = affinity.amax(-1).reshape(b, 1, h, w)
    weights = torch.softmax(affinity, dim=-1)
    return torch.bmm(weights, memory_values).transpose(1, 2).reshape(b, d, h, w), peak

"""Attention one tile at a time with the online softmax: FlashAttention's idea (Dao et al. 2022), in PyTorch.

The explicit formula softmax(q k^T / sqrt(d_k)) v builds the (T_q, T_k) scores and weights. Here the keys and
values are taken ``block_k`` positions at a time (and the queries ``block_q`` at a time); each query row keeps
a running state that is updated tile by tile (the online softmax of Milakov & Gimelshein 2018):

    m   running max of the row's scores seen so far          (start: -inf)
    l   running sum of exp(score - m)                        (start: 0)
    acc running sum of exp(score - m) v                      (start: 0)

For a new tile of scores S and values V:  m' = max(m, rowmax S),  P = exp(S - m'),  c = exp(m - m'),
l' = c l + rowsum P,  acc' = c acc + P V.  When the max grows, c < 1 rescales what was summed against the
old max. After the last tile, output = acc / l: exactly softmax(scores) v, up to rounding. No tensor larger
than a (block_q, block_k) tile of scores (or the (T_q, d_v) output) exists at once.

What stays quadratic is the compute (every score is still computed). FlashAttention is fast because it
fuses this loop into one GPU kernel that keeps the tiles in on-chip SRAM, reading q, k, v from HBM once
instead of writing and re-reading the T x T matrices; this module shows the arithmetic, not the speed.
Gradients flow through the loop by autograd, which saves each tile's probabilities for the backward
pass (O(T_q T_k) in all, as the explicit path); FlashAttention's backward recomputes them from m and l.

Mask convention: bool, True = may attend, broadcastable to (..., T_q, T_k). A query row with nothing to
attend to gets zero output, not NaN. ``causal=True`` is masks.causal_mask's rule (query i sees key j iff
j <= i + T_k - T_q) applied tile by tile: tiles wholly above the diagonal are skipped, not computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from transformer_ref._checks import check_positive_int
from transformer_ref.attention import _check_qkv


def online_softmax_step(m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor, scores_tile: torch.Tensor,
                        v_tile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One tile of the online softmax (Milakov & Gimelshein 2018; Dao et al. 2022, Algorithm 1).

    m: (..., T_q, 1) running max   l: (..., T_q, 1) running sum of exp(score - m)
    acc: (..., T_q, d_v) running sum of exp(score - m) v
    scores_tile: (..., T_q, B_k) this tile's scores, -inf where masked   v_tile: (..., B_k, d_v)
    m' = max(m, rowmax S);  l' = exp(m - m') l + rowsum exp(S - m');  acc' = exp(m - m') acc + exp(S - m') V.
    Returns (m', l', acc'). A row with no key so far keeps m = -inf, l = 0, acc = 0.
    """
    # m only keeps exp() in range: the result does not depend on it, so no gradient needs to flow through it.
    m_new = torch.maximum(m, scores_tile.amax(dim=-1, keepdim=True)).detach()  # (..., T_q, 1)
    m_ref = m_new.masked_fill(m_new == -math.inf, 0.0)  # a row with no key yet: any finite reference will do
    p = torch.exp(scores_tile - m_ref)  # (..., T_q, B_k); masked scores give exp(-inf) = 0
    rescale = torch.exp(m - m_ref)  # (..., T_q, 1): 1 if the max did not change, < 1 if it grew
    return m_new, rescale * l + p.sum(dim=-1, keepdim=True), rescale * acc + p @ v_tile


def _tile(mask: torch.Tensor | None, q_range: slice, k_range: slice) -> torch.Tensor | None:
    """The part of a (..., T_q, T_k)-broadcastable mask over a tile; a size-1 axis broadcasts and stays."""
    if mask is None:
        return None
    rows = q_range if mask.size(-2) > 1 else slice(None)
    cols = k_range if mask.size(-1) > 1 else slice(None)
    return mask[..., rows, cols]


def _causal_tile(q_range: range, k_range: range, offset: int, device: torch.device) -> torch.Tensor | None:
    """(len(q_range), len(k_range)) bool, key j visible to query i iff j <= i + offset; None if all visible."""
    if k_range[-1] <= q_range[0] + offset:
        return None
    i = torch.arange(q_range.start, q_range.stop, device=device).unsqueeze(1)  # (B_q, 1)
    j = torch.arange(k_range.start, k_range.stop, device=device)  # (B_k,)
    return j <= i + offset  # (B_q, B_k)


def _check_tiled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, block_k: int,
                 block_q: int | None, causal: bool) -> None:
    _check_qkv(q, k, v, mask)
    check_positive_int(block_k, "block_k")
    if block_q is not None:
        check_positive_int(block_q, "block_q")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool; got {type(causal).__name__}")


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                    block_k: int = 64, block_q: int | None = None, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k)) v (Vaswani et al. 2017, eq. 1), computed tile by tile (Dao et al. 2022).

    q: (..., T_q, d_k)   k: (..., T_k, d_k)   v: (..., T_k, d_v); leading axes broadcast.
    mask: bool, broadcastable to (..., T_q, T_k); True = may attend.
    block_k: keys and values per tile; block_q: queries per tile (None: all T_q at once). Neither has to
    divide T. causal: also apply the causal rule j <= i + T_k - T_q, skipping the tiles it hides wholly.
    Returns the output (..., T_q, d_v), equal to scaled_dot_product_attention's to rounding; the largest
    tensor built is a (..., block_q, block_k) tile of scores or the output itself. In float16/bfloat16
    the running state is kept in float32, as FlashAttention does. Fully masked query rows give zeros.
    """
    _check_tiled(q, k, v, mask, block_k, block_q, causal)  # arguments checked here
    T_q = q.size(-2)
    block_q = T_q if block_q is None else block_q
    mask = None if mask is None else torch.atleast_2d(mask)  # (..., T_q or 1, T_k or 1)
    tiles = [_attend_query_tile(q, k, v, mask, range(start, min(start + block_q, T_q)), block_k, causal)
             for start in range(0, T_q, block_q)]
    return torch.cat(tiles, dim=-2) if len(tiles) > 1 else tiles[0]  # (..., T_q, d_v)


def _attend_query_tile(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                       rows: range, block_k: int, causal: bool) -> torch.Tensor:
    """The output rows ``rows`` of :func:`tiled_attention`: the loop over key/value tiles."""
    T_q, T_k = q.size(-2), k.size(-2)
    state_dtype = torch.promote_types(q.dtype, torch.float32)  # float32 state for half inputs
    q_tile = q[..., rows.start:rows.stop, :].to(state_dtype) / math.sqrt(q.size(-1))  # (..., B_q, d_k)
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    m = torch.full((*batch, len(rows), 1), -math.inf, dtype=state_dtype, device=q.device)
    l = torch.zeros_like(m)  # (..., B_q, 1)
    acc = torch.zeros((*batch, len(rows), v.size(-1)), dtype=state_dtype, device=q.device)  # (..., B_q, d_v)
    offset = T_k - T_q  # causal: query i sees keys 0 .. i + offset
    k_end = min(T_k, rows.stop + offset) if causal else T_k  # keys past k_end are hidden from every row here
    for start in range(0, k_end, block_k):
        cols = range(start, min(start + block_k, k_end))
        scores = q_tile @ k[..., cols.start:cols.stop, :].to(state_dtype).transpose(-2, -1)  # (..., B_q, B_k)
        tile_mask = _tile(mask, slice(rows.start, rows.stop), slice(cols.start, cols.stop))
        if causal and (hidden := _causal_tile(rows, cols, offset, q.device)) is not None:
            tile_mask = hidden if tile_mask is None else tile_mask & hidden
        if tile_mask is not None:
            scores = scores.masked_fill(~tile_mask, -math.inf)
        m, l, acc = online_softmax_step(m, l, acc, scores, v[..., cols.start:cols.stop, :].to(state_dtype))
    # l = 0 only where a row saw no key (acc = 0 there too): divide by 1 instead, so the row stays 0, not NaN.
    return (acc / l.masked_fill(l == 0, 1.0)).to(q.dtype)  # (..., B_q, d_v)


class LargestIntermediate(TorchDispatchMode):
    """Context manager: the largest tensor that any operation creates while it is active (forward and backward).

    Views (slices, transposes, expands) are skipped: they allocate nothing. After the block, ``numel`` and
    ``shape`` describe the largest new tensor, ``nbytes`` its size. With the explicit formula that is the
    (..., T_q, T_k) scores; with :func:`tiled_attention`, a tile of scores or the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.numel, self.nbytes, self.shape = 0, 0, ()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's protocol)
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                    self.numel, self.nbytes, self.shape = t.numel(), t.numel() * t.element_size(), tuple(t.shape)
        return out


def largest_intermediate(fn: Callable[[], object]) -> LargestIntermediate:
    """Run fn() and return the record of the largest tensor it created (``.numel``, ``.nbytes``, ``.shape``)."""
    with LargestIntermediate() as record:
        fn()
    return record

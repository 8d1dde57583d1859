"""Position information for attention, which by itself is blind to order.

- Absolute: the sinusoidal encoding of Vaswani et al. 2017 (section 3.5) and learned embeddings.
- Relative: the clipped relative position representations of Shaw et al. 2018 (key and value terms),
  and the memory-efficient "skewing" of Huang et al. 2019 (Music Transformer, section 3.4.1).
- Rotary: the rotary position embedding (RoPE) of Su et al. 2021.

Mask convention (everywhere in this package): bool tensors, True = may attend, broadcastable to
(..., T_q, T_k). A query row with nothing to attend to gets zero weights and zero output, never NaN.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transformer_ref._checks import (check_floating, check_mask, check_min_ndim, check_ndim, check_positive_int,
                                     check_same_device, check_size)
from transformer_ref.attention import _masked_softmax
from transformer_ref.multihead import MultiHeadAttention, merge_heads, split_heads


def _check_table_size(max_len: int, d_model: int) -> None:
    check_positive_int(max_len, "max_len")
    check_positive_int(d_model, "d_model")


def sinusoidal_positional_encoding(max_len: int, d_model: int, device: torch.device | str | None = None,
                                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """The fixed sinusoidal table of Vaswani et al. 2017, section 3.5 (interleaved sin/cos).

        PE[pos, 2i]     = sin(pos / 10000^(2i / d_model))
        PE[pos, 2i + 1] = cos(pos / 10000^(2i / d_model))

    Even columns hold sines, odd columns cosines, the pair (2i, 2i+1) sharing one frequency.
    An odd d_model is allowed: the last column is then the sine of the last frequency.
    The table is computed in float64 and cast to `dtype` (default: torch.get_default_dtype()).
    Returns (max_len, d_model).
    """
    _check_table_size(max_len, d_model)  # arguments checked here
    dtype = torch.get_default_dtype() if dtype is None else dtype
    position = torch.arange(max_len, device=device, dtype=torch.float64).unsqueeze(1)  # (max_len, 1)
    two_i = torch.arange(0, d_model, 2, device=device, dtype=torch.float64)           # (ceil(d/2),)
    angle = position / 10000.0 ** (two_i / d_model)                                    # (max_len, ceil(d/2))
    pe = torch.empty(max_len, d_model, device=device, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe.to(dtype)


def _check_sequence(x: torch.Tensor, d_model: int, max_len: int, offset: int = 0) -> None:
    """x must be (B, T, d_model) with offset + T <= max_len (offset: a non-negative int)."""
    check_floating(x, "x")
    check_ndim(x, "x", 3, "(B, T, d_model)")
    check_size(x, "x", 2, d_model, "d_model")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative int; got {offset!r}")
    if offset + x.size(1) > max_len:
        at = f" from position offset = {offset}" if offset else ""
        raise ValueError(f"x has sequence length T = {x.size(1)}{at} but the positional table has max_len = "
                         f"{max_len}; build the module with a larger max_len")


class SinusoidalPositionalEncoding(nn.Module):
    """x + PE[:T], then dropout (Vaswani et al. 2017, section 3.5; dropout as in section 5.4).

    The table is a non-persistent buffer: it follows .to(device) but is not saved in state_dict,
    because it is a function of (max_len, d_model), not a learned parameter.
    forward: x (B, T, d_model) with offset + T <= max_len -> (B, T, d_model); x holds positions
    offset .. offset + T - 1 (offset > 0: the new tokens of incremental decoding).
    """

    pe: torch.Tensor

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0) -> None:
        super().__init__()
        self.d_model = check_positive_int(d_model, "d_model")
        self.max_len = check_positive_int(max_len, "max_len")
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoidal_positional_encoding(max_len, d_model), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        _check_sequence(x, self.d_model, self.max_len, offset)
        pe = self.pe[offset: offset + x.size(1)].to(device=x.device, dtype=x.dtype)  # (T, d_model)
        return self.dropout(x + pe)


class LearnedPositionalEmbedding(nn.Module):
    """x + E[:T] with a learned table E (max_len, d_model), as in BERT and GPT.

    E is an nn.Embedding named `embedding`, initialised N(0, 0.02^2) like BERT.
    forward: x (B, T, d_model) with T <= max_len -> (B, T, d_model).
    """

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        self.max_len = check_positive_int(max_len, "max_len")
        self.d_model = check_positive_int(d_model, "d_model")
        self.embedding = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_sequence(x, self.d_model, self.max_len)
        return x + self.embedding.weight[: x.size(1)]  # (B, T, d_model) + (T, d_model)


def relative_position_index(q_len: int, k_len: int, max_distance: int,
                            device: torch.device | str | None = None) -> torch.Tensor:
    """Shaw et al. 2018, section 3.2: index[i, j] = clip(j - i, -k, k) + k with k = max_distance.

    Query i and key j are both counted from 0. The result indexes a table of 2k + 1 embeddings,
    one per clipped distance -k .. k. Returns (q_len, k_len) long.
    """
    check_positive_int(q_len, "q_len")
    check_positive_int(k_len, "k_len")
    if isinstance(max_distance, bool) or not isinstance(max_distance, int) or max_distance < 0:
        raise ValueError(f"max_distance must be a non-negative int; got {max_distance!r}")
    i = torch.arange(q_len, device=device).unsqueeze(1)  # (q_len, 1)
    j = torch.arange(k_len, device=device).unsqueeze(0)  # (1, k_len)
    return (j - i).clamp(-max_distance, max_distance) + max_distance  # (q_len, k_len)


def _check_relative_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_k: torch.Tensor,
                              rel_v: torch.Tensor, mask: torch.Tensor | None) -> None:
    """The shapes of :func:`relative_attention` (rel_k (T_q, T_k, d_k), rel_v (T_q, T_k, d_v)) and its mask."""
    for name, t in (("q", q), ("k", k), ("v", v), ("rel_k", rel_k), ("rel_v", rel_v)):
        check_floating(t, name)
    for name, t, hint in (("q", q, "(..., T_q, d_k)"), ("k", k, "(..., T_k, d_k)"), ("v", v, "(..., T_k, d_v)")):
        check_min_ndim(t, name, 2, hint)
    check_ndim(rel_k, "rel_k", 3, "(T_q, T_k, d_k)")
    check_ndim(rel_v, "rel_v", 3, "(T_q, T_k, d_v)")
    check_same_device(("q", q), ("k", k), ("v", v), ("rel_k", rel_k), ("rel_v", rel_v))
    t_q, d_k = q.shape[-2:]
    t_k = k.size(-2)
    if k.size(-1) != d_k or v.size(-2) != t_k:
        raise ValueError(f"k must be (..., T_k, d_k) with d_k = {d_k} and v (..., T_k, d_v) with the same T_k; "
                         f"got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if rel_k.shape != (t_q, t_k, d_k):
        raise ValueError(f"rel_k must have shape (T_q, T_k, d_k) = {(t_q, t_k, d_k)}; got {tuple(rel_k.shape)}")
    if rel_v.shape != (t_q, t_k, v.size(-1)):
        raise ValueError(f"rel_v must have shape (T_q, T_k, d_v) = {(t_q, t_k, v.size(-1))}; "
                         f"got {tuple(rel_v.shape)}")
    check_mask(mask, "mask", (*q.shape[:-2], t_q, t_k), device=q.device)


def relative_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_k: torch.Tensor,
                       rel_v: torch.Tensor, mask: torch.Tensor | None = None, dropout_p: float = 0.0
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention with relative position representations (Shaw et al. 2018, eq. 3-4).

        e_ij = q_i . (k_j + a^K_ij) / sqrt(d_k)
        z_i  = sum_j softmax_j(e_ij) (v_j + a^V_ij)

    q: (..., T_q, d_k)   k: (..., T_k, d_k)   v: (..., T_k, d_v)
    rel_k: (T_q, T_k, d_k) = a^K, rel_v: (T_q, T_k, d_v) = a^V, the gathered embeddings
    (e.g. table[relative_position_index(T_q, T_k, max_distance)]), shared by all batch entries and heads.
    mask: bool, broadcastable to (..., T_q, T_k); True = may attend.
    dropout_p: dropout on the weights, applied whenever > 0 (pass 0.0 in evaluation).
    Returns (output (..., T_q, d_v), weights (..., T_q, T_k)), the weights being those used (after
    dropout); a fully masked row gives zero weights and zero output, not NaN.
    """
    _check_relative_attention(q, k, v, rel_k, rel_v, mask)  # arguments checked here
    d_k = q.size(-1)
    scores = q @ k.transpose(-2, -1)                              # (..., T_q, T_k)
    scores = scores + torch.einsum("...qd,qkd->...qk", q, rel_k)  # (..., T_q, T_k)
    weights = _masked_softmax(scores / math.sqrt(d_k), mask)      # (..., T_q, T_k)
    if dropout_p > 0.0:
        weights = nn.functional.dropout(weights, p=dropout_p)
    output = weights @ v + torch.einsum("...qk,qkd->...qd", weights, rel_v)  # (..., T_q, d_v)
    return output, weights


class RelativeMultiHeadAttention(MultiHeadAttention):
    """Multi-head attention with Shaw et al. 2018 relative position representations.

    Like MultiHeadAttention (members W_q, W_k, W_v, W_o, same masks and return values), plus two
    tables of 2 * max_distance + 1 learned embeddings of size d_k, one per clipped distance
    clip(j - i, -max_distance, max_distance): rel_k (the key term a^K) and rel_v (the value term a^V),
    shared by all heads as in the paper, initialised N(0, 0.02^2).
    forward(query (B, T_q, d_model), key, value (B, T_k, d_model), mask=None, need_weights=True)
    -> (output (B, T_q, d_model), weights (B, H, T_q, T_k) or None).
    mask: bool, True = may attend; broadcastable to (B, T_q, T_k) or 4-D (B, H, T_q, T_k).
    Query i and key j are both counted from position 0.
    """

    def __init__(self, d_model: int, num_heads: int, max_distance: int, bias: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__(d_model, num_heads, bias=bias, dropout=dropout)
        relative_position_index(1, 1, max_distance)  # validates max_distance
        self.max_distance = max_distance
        self.rel_k = nn.Embedding(2 * max_distance + 1, self.d_k)
        self.rel_v = nn.Embedding(2 * max_distance + 1, self.d_k)
        nn.init.normal_(self.rel_k.weight, std=0.02)
        nn.init.normal_(self.rel_v.weight, std=0.02)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None = None,
                need_weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = self._check_inputs(query, key, value, mask)
        index = relative_position_index(query.size(1), key.size(1), self.max_distance,
                                        device=query.device)  # (T_q, T_k)
        q = split_heads(self.W_q(query), self.num_heads)  # (B, H, T_q, d_k)
        k = split_heads(self.W_k(key), self.num_heads)    # (B, H, T_k, d_k)
        v = split_heads(self.W_v(value), self.num_heads)  # (B, H, T_k, d_k)
        heads, weights = relative_attention(q, k, v, self.rel_k(index), self.rel_v(index), mask,
                                            self.dropout if self.training else 0.0)  # (B, H, T_q, d_k)
        return self.W_o(merge_heads(heads)), (weights if need_weights else None)


def _check_rel_logits(rel_logits: torch.Tensor) -> None:
    check_floating(rel_logits, "rel_logits")
    if rel_logits.dim() < 2:
        raise ValueError(f"rel_logits must have shape (..., L, L) or (..., L, 2L-1); got {tuple(rel_logits.shape)}")


def skew(rel_logits: torch.Tensor) -> torch.Tensor:
    """Huang et al. 2019 (Music Transformer, section 3.4.1): turn logits indexed by relative distance
    into logits indexed by absolute key position, with a pad and a reshape instead of an
    (L, L, d) gather.

    rel_logits[..., i, r] is q_i . E_r[r] where column r stands for the distance j - i = r - (L - 1)
    in both layouts:
      causal:        rel_logits (..., L, L),      distances -(L-1) .. 0;
      bidirectional: rel_logits (..., L, 2L - 1), distances -(L-1) .. L-1.
    Returns S (..., L, L) with S[..., i, j] = rel_logits[..., i, j - i + L - 1].
    In the causal case the distances j - i > 0 do not exist, and S[..., i, j] = 0 for j > i
    (the paper leaves these entries arbitrary; they are masked anyway).
    """
    _check_rel_logits(rel_logits)  # argument checked here (the two layouts below)
    length, width = rel_logits.shape[-2:]
    lead = rel_logits.shape[:-2]
    padded = nn.functional.pad(rel_logits, (1, 0))                 # (..., L, R + 1), zero column first
    if width == length:
        # Reading the flat (L, L + 1) buffer as (L + 1, L) shifts row i left by L - 1 - i.
        skewed = padded.reshape(*lead, length + 1, length)[..., 1:, :]  # (..., L, L)
        return torch.tril(skewed)
    if width == 2 * length - 1:
        # Row i of the flat (L, 2L) buffer starts at i * 2L; reading rows of 2L - 1 from offset L
        # puts rel_logits[i, j - i + L - 1] at column j.
        flat = padded.flatten(-2)[..., length:]                     # (..., L * (2L - 1))
        return flat.reshape(*lead, length, 2 * length - 1)[..., :length]  # (..., L, L)
    raise ValueError(f"rel_logits must have shape (..., L, L) (causal) or (..., L, 2L-1) (bidirectional); "
                     f"got {tuple(rel_logits.shape)}")


def _check_relative_table(q: torch.Tensor, rel_emb: torch.Tensor) -> None:
    check_floating(q, "q")
    check_floating(rel_emb, "rel_emb")
    check_ndim(rel_emb, "rel_emb", 2, "(L, d) or (2L-1, d)")
    check_same_device(("q", q), ("rel_emb", rel_emb))
    if q.dim() < 2:
        raise ValueError(f"q must have shape (..., L, d); got {tuple(q.shape)}")
    length, d = q.shape[-2:]
    check_size(rel_emb, "rel_emb", 1, d, "d (the last size of q)")
    if rel_emb.size(0) not in (length, 2 * length - 1):
        raise ValueError(f"rel_emb must have L = {length} rows (causal) or 2L - 1 = {2 * length - 1} rows "
                         f"(bidirectional) for q of length L = {length}; got shape {tuple(rel_emb.shape)}")


def relative_logits_skewed(q: torch.Tensor, rel_emb: torch.Tensor) -> torch.Tensor:
    """Relative logits S[i, j] = q_i . E[j - i + L - 1] in O(L^2) memory (Huang et al. 2019).

    q: (..., L, d). rel_emb E: one row per distance, from the most negative up:
    (L, d) causal (distances -(L-1) .. 0) or (2L - 1, d) bidirectional (-(L-1) .. L-1).
    Returns (..., L, L); in the causal case entries with j > i are 0.
    """
    _check_relative_table(q, rel_emb)
    return skew(q @ rel_emb.transpose(0, 1))  # (..., L, R) -> (..., L, L)


def relative_logits_naive(q: torch.Tensor, rel_emb: torch.Tensor) -> torch.Tensor:
    """The same as relative_logits_skewed, by gathering an (L, L, d) tensor of embeddings (Shaw et al.
    2018's formulation, O(L^2 d) memory): S[i, j] = q_i . E[j - i + L - 1], 0 where j - i > 0 has no row.
    q: (..., L, d), rel_emb: (L, d) or (2L - 1, d). Returns (..., L, L).
    """
    _check_relative_table(q, rel_emb)
    length = q.size(-2)
    causal = rel_emb.size(0) == length
    index = relative_position_index(length, length, length - 1, device=q.device)  # (L, L) in 0 .. 2L-2
    if causal:
        # Rows only exist for distances <= 0; point the others at an appended zero row.
        rel_emb = torch.cat([rel_emb, rel_emb.new_zeros(1, rel_emb.size(1))])        # (L + 1, d)
        index = torch.where(index < length, index, length)
    gathered = rel_emb[index]                                 # (L, L, d)
    return torch.einsum("...id,ijd->...ij", q, gathered)      # (..., L, L)


def apply_rotary(x: torch.Tensor, positions: torch.Tensor | None = None, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021, RoFormer, section 3.4.2): rotate each pair
    (x[2i], x[2i+1]) at position m by the angle m * theta_i, theta_i = base^(-2i/d).

    Applied to queries and keys, q_m . k_n then depends on m - n only.
    x: (..., T, d) with d even. positions: (T,) (default 0 .. T-1). Returns (..., T, d), same dtype.
    """
    check_floating(x, "x")
    if x.dim() < 2 or x.size(-1) % 2 != 0:
        raise ValueError(f"x must have shape (..., T, d) with d even; got {tuple(x.shape)}")
    t, d = x.shape[-2:]
    if positions is None:
        positions = torch.arange(t, device=x.device)
    check_ndim(positions, "positions", 1, "(T,)")
    check_size(positions, "positions", 0, t, "T")
    check_same_device(("x", x), ("positions", positions))
    theta = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float64) / d)  # (d/2,)
    angle = positions.to(torch.float64).unsqueeze(-1) * theta                          # (T, d/2)
    cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
    x_even, x_odd = x[..., 0::2], x[..., 1::2]                                         # (..., T, d/2)
    rotated = torch.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], dim=-1)  # (..., T, d/2, 2)
    return rotated.flatten(-2)                                                         # (..., T, d)

"""The catalogue of known mistakes, per graded item, for :mod:`transformer_ref.testing`.

Each entry is a small, plausible wrong implementation in the same form as a submission (a function
or an nn.Module class), with a sentence that completes "Likely mistake: ...". When a submission's
outputs equal a mistake's outputs on every case, the checker names that mistake. The same entries
are the wrong submissions of ``tests/test_catalogue.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from transformer_ref.testing import Mistake

CATALOGUE: dict[str, list[Mistake]] = {}


def mistake(item: str, key: str, says: str):
    """Decorator: register the decorated function or class as mistake `key` of graded item `item`."""
    def register(impl: Any) -> Any:
        CATALOGUE.setdefault(item, []).append(Mistake(key, says, impl))
        return impl
    return register


# ------------------------------------------------------------------ shared pieces of attention

def _softmax_rows(scores: torch.Tensor, mask: torch.Tensor | None, *, fill: float | None = None,
                  dim: int = -1) -> torch.Tensor:
    """softmax with masked entries filled by `fill` (default: the dtype's smallest) and fully masked rows zeroed."""
    if mask is None:
        return torch.softmax(scores, dim=dim)
    fill = torch.finfo(scores.dtype).min if fill is None else fill
    weights = torch.softmax(scores.masked_fill(~mask, fill), dim=dim)
    return weights if fill == float("-inf") else weights.masked_fill(~mask, 0.0)


def _attend(q, k, v, mask=None, *, scale: float | None = None, dim: int = -1, invert: bool = False,
            after: bool = False, fill: float | None = None):
    """Scaled dot-product attention with one knob turned the wrong way."""
    scale = math.sqrt(q.size(-1)) if scale is None else scale
    scores = q @ k.transpose(-2, -1) / scale
    if mask is not None and invert:
        mask = ~mask
    if mask is not None and after:
        weights = torch.softmax(scores, dim=dim) * mask
    elif fill is not None and mask is not None:
        weights = torch.softmax(scores.masked_fill(~mask, fill), dim=dim)
    else:
        weights = _softmax_rows(scores, mask, dim=dim)
    return weights @ v, weights


# ------------------------------------------------------------------ 03_attention

@mistake("dot_product_attention", "scaled",
         "you divided X X^T by sqrt(d); this first version has no scaling: softmax(X X^T) X.")
def _dpa_scaled(x):
    return _attend(x, x, x)


@mistake("dot_product_attention", "softmax_axis",
         "your softmax runs over the wrong axis (dim=-2, down the columns); each query's row of weights "
         "must sum to 1, so use dim=-1.")
def _dpa_axis(x):
    return _attend(x, x, x, scale=1.0, dim=-2)


@mistake("scaled_dot_product_attention", "no_scale",
         "your weights equal softmax(QK^T) without dividing by sqrt(d_k).")
def _sdpa_no_scale(q, k, v, mask=None):
    return _attend(q, k, v, mask, scale=1.0)


@mistake("scaled_dot_product_attention", "scale_d_k",
         "you divided QK^T by d_k; the paper divides by sqrt(d_k).")
def _sdpa_scale_d_k(q, k, v, mask=None):
    return _attend(q, k, v, mask, scale=q.size(-1))


@mistake("scaled_dot_product_attention", "softmax_axis",
         "your softmax runs over the queries (dim=-2) instead of the keys (dim=-1); each row of "
         "weights must sum to 1.")
def _sdpa_axis(q, k, v, mask=None):
    return _attend(q, k, v, mask, dim=-2)


@mistake("scaled_dot_product_attention", "mask_inverted",
         "your mask is inverted: True means 'may attend', so fill the scores where the mask is False "
         "(masked_fill(~mask, ...)).")
def _sdpa_inverted(q, k, v, mask=None):
    return _attend(q, k, v, mask, invert=True)


@mistake("scaled_dot_product_attention", "mask_after_softmax",
         "you applied the mask after the softmax (weights * mask), so the remaining weights no longer "
         "sum to 1; mask the scores before the softmax.")
def _sdpa_after(q, k, v, mask=None):
    return _attend(q, k, v, mask, after=True)


@mistake("scaled_dot_product_attention", "masked_row_uniform",
         "a query whose keys are all masked gets uniform weights (filling with a large negative number "
         "and nothing else); such a row must get zero weights and zero output.")
def _sdpa_uniform(q, k, v, mask=None):
    return _attend(q, k, v, mask, fill=-1e9)


@mistake("scaled_dot_product_attention", "masked_row_nan",
         "filling masked scores with -inf makes a fully masked row softmax(-inf, ..., -inf) = NaN; "
         "give such a row zero weights and zero output.")
def _sdpa_nan(q, k, v, mask=None):
    return _attend(q, k, v, mask, fill=float("-inf"))


@mistake("self_attention", "scale_d_model",
         "you divided by sqrt(d_model); scale by sqrt(d_k), the size of the query/key projections "
         "(W_q.shape[1]).")
def _sa_d_model(x, W_q, W_k, W_v, mask=None):
    return _attend(x @ W_q, x @ W_k, x @ W_v, mask, scale=math.sqrt(x.size(-1)))


@mistake("self_attention", "no_scale", "your weights equal softmax(QK^T) without dividing by sqrt(d_k).")
def _sa_no_scale(x, W_q, W_k, W_v, mask=None):
    return _attend(x @ W_q, x @ W_k, x @ W_v, mask, scale=1.0)


@mistake("self_attention", "q_k_swapped",
         "your weights are transposed: the scores are K Q^T instead of Q K^T (softmax then runs "
         "over the wrong index).")
def _sa_swapped(x, W_q, W_k, W_v, mask=None):
    return _attend(x @ W_k, x @ W_q, x @ W_v, mask)


# ------------------------------------------------------------------ 02_positional_encoding

def _angles(max_len: int, d_model: int, *, start: int = 0, exponent: str = "2i", multiply: bool = False
            ) -> torch.Tensor:
    """pos / 10000^(2i / d_model) for the ceil(d/2) frequencies, in float64 -> (max_len, ceil(d/2))."""
    pos = torch.arange(start, start + max_len, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)
    if exponent == "i":
        two_i = two_i / 2
    base = 10000.0 ** (two_i / d_model)
    return pos * base if multiply else pos / base


def _interleave(even: torch.Tensor, odd: torch.Tensor, d_model: int) -> torch.Tensor:
    pe = torch.empty(even.size(0), d_model, dtype=torch.float64)
    pe[:, 0::2] = even
    pe[:, 1::2] = odd[:, : d_model // 2]
    return pe.float()


@mistake("sinusoidal_positional_encoding", "sin_cos_swapped",
         "sin and cos are swapped: even columns (2i) hold sin(pos / 10000^(2i/d_model)), odd columns (2i+1) the cos.")
def _pe_swapped(max_len, d_model):
    a = _angles(max_len, d_model)
    return _interleave(torch.cos(a), torch.sin(a), d_model)


@mistake("sinusoidal_positional_encoding", "concatenated",
         "you concatenated [sin | cos] (all sines in the first half, all cosines in the second); the paper "
         "interleaves them: column 2i is a sine, column 2i+1 the cosine of the same frequency.")
def _pe_concat(max_len, d_model):
    a = _angles(max_len, d_model)
    return torch.cat([torch.sin(a), torch.cos(a[:, : d_model // 2])], dim=1).float()


@mistake("sinusoidal_positional_encoding", "exponent_i",
         "your frequencies use 10000^(i/d_model) with i the pair index; the exponent is 2i/d_model (equivalently "
         "the even column index 2i divided by d_model).")
def _pe_exponent(max_len, d_model):
    a = _angles(max_len, d_model, exponent="i")
    return _interleave(torch.sin(a), torch.cos(a), d_model)


@mistake("sinusoidal_positional_encoding", "column_exponent",
         "each column uses its own index in the exponent (10000^(j/d_model) for column j); the sine and cosine of "
         "a pair (2i, 2i+1) share one frequency, 10000^(2i/d_model).")
def _pe_column(max_len, d_model):
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    angle = pos / 10000.0 ** (torch.arange(d_model, dtype=torch.float64) / d_model)
    pe = torch.where(torch.arange(d_model) % 2 == 0, torch.sin(angle), torch.cos(angle))
    return pe.float()


@mistake("sinusoidal_positional_encoding", "positions_from_1",
         "your positions start at 1; they start at 0 (the first row is sin(0) = 0, cos(0) = 1).")
def _pe_from_one(max_len, d_model):
    a = _angles(max_len, d_model, start=1)
    return _interleave(torch.sin(a), torch.cos(a), d_model)


@mistake("sinusoidal_positional_encoding", "multiplied",
         "you multiplied the position by 10000^(2i/d_model); divide by it: pos / 10000^(2i/d_model).")
def _pe_multiplied(max_len, d_model):
    a = _angles(max_len, d_model, multiply=True)
    return _interleave(torch.sin(a), torch.cos(a), d_model)


def _distance(q_len: int, k_len: int) -> torch.Tensor:
    return torch.arange(k_len)[None, :] - torch.arange(q_len)[:, None]  # (q_len, k_len): j - i


@mistake("relative_position_index", "i_minus_j",
         "you used i - j (query minus key); the relative position of key j seen from query i is j - i.")
def _rel_i_minus_j(q_len, k_len, max_distance):
    return (-_distance(q_len, k_len)).clamp(-max_distance, max_distance) + max_distance


@mistake("relative_position_index", "not_shifted",
         "you clipped j - i to [-k, k] but did not add k, so the indices can be negative; shift them to 0 .. 2k.")
def _rel_not_shifted(q_len, k_len, max_distance):
    return _distance(q_len, k_len).clamp(-max_distance, max_distance)


@mistake("relative_position_index", "not_clipped",
         "you did not clip j - i to [-max_distance, max_distance] before shifting it.")
def _rel_not_clipped(q_len, k_len, max_distance):
    return _distance(q_len, k_len) + max_distance


@mistake("relative_position_index", "shift_then_clip",
         "you added k before clipping to [-k, k]; clip j - i to [-k, k] first, then add k.")
def _rel_clip_after(q_len, k_len, max_distance):
    return (_distance(q_len, k_len) + max_distance).clamp(-max_distance, max_distance)


def _shaw(q, k, v, rel_k, rel_v, mask=None, *, use_rel_k=True, use_rel_v=True, scale_rel=True, scale=True,
          transpose_rel=False):
    if transpose_rel:
        rel_k, rel_v = rel_k.transpose(0, 1), rel_v.transpose(0, 1)
    d = math.sqrt(q.size(-1)) if scale else 1.0
    scores = q @ k.transpose(-2, -1) / d
    if use_rel_k:
        scores = scores + torch.einsum("...qd,qkd->...qk", q, rel_k) / (d if scale_rel else 1.0)
    weights = _softmax_rows(scores, mask)
    out = weights @ v
    if use_rel_v:
        out = out + torch.einsum("...qk,qkd->...qd", weights, rel_v)
    return out, weights


@mistake("relative_attention", "no_rel_v",
         "your output leaves out the value term: z_i = sum_j w_ij (v_j + a^V_ij), not sum_j w_ij v_j.")
def _shaw_no_v(q, k, v, rel_k, rel_v, mask=None):
    return _shaw(q, k, v, rel_k, rel_v, mask, use_rel_v=False)


@mistake("relative_attention", "no_rel_k",
         "your scores leave out the key term: e_ij = q_i . (k_j + a^K_ij) / sqrt(d_k).")
def _shaw_no_k(q, k, v, rel_k, rel_v, mask=None):
    return _shaw(q, k, v, rel_k, rel_v, mask, use_rel_k=False)


@mistake("relative_attention", "rel_k_unscaled",
         "only q . k is divided by sqrt(d_k); the relative term q . a^K is part of the score and is divided too.")
def _shaw_unscaled_rel(q, k, v, rel_k, rel_v, mask=None):
    return _shaw(q, k, v, rel_k, rel_v, mask, scale_rel=False)


@mistake("relative_attention", "no_scale", "your scores are not divided by sqrt(d_k).")
def _shaw_no_scale(q, k, v, rel_k, rel_v, mask=None):
    return _shaw(q, k, v, rel_k, rel_v, mask, scale=False)


@mistake("relative_attention", "rel_transposed",
         "you used a_ji instead of a_ij: rel_k[i, j] belongs to query i and key j (no transpose).")
def _shaw_transposed(q, k, v, rel_k, rel_v, mask=None):
    return _shaw(q, k, v, rel_k, rel_v, mask, transpose_rel=True)


# ------------------------------------------------------------------ 04_multi_head

@mistake("split_heads", "no_transpose",
         "you reshaped (B, T, d_model) straight to (B, H, T, d_k) without a transpose, which mixes positions "
         "between heads; view as (B, T, H, d_k) first, then transpose(1, 2).")
def _split_no_transpose(x, num_heads):
    B, T, d = x.shape
    return x.reshape(B, num_heads, T, d // num_heads)


@mistake("split_heads", "interleaved",
         "your heads take every H-th feature; head h holds the contiguous features h*d_k .. (h+1)*d_k - 1 "
         "(view as (B, T, H, d_k), not (B, T, d_k, H)).")
def _split_interleaved(x, num_heads):
    B, T, d = x.shape
    return x.reshape(B, T, d // num_heads, num_heads).permute(0, 3, 1, 2)


@mistake("merge_heads", "no_transpose",
         "you reshaped (B, H, T, d_k) straight to (B, T, H*d_k) without moving the head axis next to d_k; "
         "transpose(1, 2) first, then reshape.")
def _merge_no_transpose(x):
    B, H, T, d_k = x.shape
    return x.reshape(B, T, H * d_k)


@mistake("merge_heads", "interleaved",
         "your result interleaves the heads feature by feature; concatenate them: head 0's d_k features, "
         "then head 1's, ... (transpose(1, 2), then reshape).")
def _merge_interleaved(x):
    B, H, T, d_k = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, H * d_k)


class _MHAMistake(nn.Module):
    """A multi-head attention with one thing done wrong (the `_forward` knobs)."""

    knobs: dict = {}

    def __init__(self, d_model, num_heads):
        super().__init__()
        self.h = num_heads
        self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, query, key, value, mask=None):
        knobs = self.knobs
        B, T_q, d = query.shape
        d_k = d // self.h

        def split(x):
            if knobs.get("no_transpose"):
                return x.reshape(B, self.h, x.size(1), d_k)
            return x.view(B, x.size(1), self.h, d_k).transpose(1, 2)
        key_in = query if knobs.get("query_for_keys") else key
        value_in = query if knobs.get("query_for_keys") else value
        q, k, v = split(self.W_q(query)), split(self.W_k(key_in)), split(self.W_v(value_in))
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)
        scale = math.sqrt(d) if knobs.get("scale_d_model") else math.sqrt(d_k)
        heads, weights = _attend(q, k, v, mask, scale=scale)
        merged = heads.transpose(1, 2).reshape(B, T_q, d)
        out = merged if knobs.get("no_output_projection") else self.W_o(merged)
        return out, (weights.mean(1) if knobs.get("average_weights") else weights)


def _mha_mistake(key: str, says: str) -> type:
    cls = type(f"MHA_{key}", (_MHAMistake,), {"knobs": {key: True}})
    return mistake("MultiHeadAttention", key, says)(cls)


_mha_mistake("no_transpose", "your heads were reshaped to (B, H, T, d_k) without a transpose; view the "
             "projections as (B, T, H, d_k), then transpose(1, 2).")
_mha_mistake("scale_d_model", "you divided the scores by sqrt(d_model); each head scales by sqrt(d_k) with "
             "d_k = d_model / num_heads.")
_mha_mistake("no_output_projection", "the concatenated heads are returned without the output projection W_o.")
_mha_mistake("query_for_keys", "keys and values are computed from `query`; project `key` with W_k and `value` with "
             "W_v (in cross-attention they differ from the query).")
_mha_mistake("average_weights", "you returned the weights averaged over the heads (as nn.MultiheadAttention does "
             "by default); return them per head, (B, H, T_q, T_k).")


# ------------------------------------------------------------------ 05_masking

@mistake("causal_mask", "inverted",
         "your mask is inverted (True above the diagonal, i.e. nn.MultiheadAttention's True = ignore); in this "
         "course True = may attend, so the lower triangle is True.")
def _causal_inverted(T_q, T_k=None, device=None):
    T_k = T_q if T_k is None else T_k
    return ~torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(T_k - T_q)


@mistake("causal_mask", "no_diagonal",
         "your mask hides the diagonal: a position may attend to itself (j <= i, not j < i).")
def _causal_no_diagonal(T_q, T_k=None, device=None):
    T_k = T_q if T_k is None else T_k
    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(T_k - T_q - 1)


@mistake("causal_mask", "top_left",
         "with T_k > T_q the queries are the last T_q positions: query i may see keys j <= i + (T_k - T_q); "
         "your mask is aligned to the top-left corner.")
def _causal_top_left(T_q, T_k=None, device=None):
    T_k = T_q if T_k is None else T_k
    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril()


@mistake("causal_mask", "float_mask",
         "your mask is a float tensor; return a bool tensor (True = may attend).")
def _causal_float(T_q, T_k=None, device=None):
    T_k = T_q if T_k is None else T_k
    return torch.ones(T_q, T_k, device=device).tril(T_k - T_q)


@mistake("padding_mask", "inverted", "your mask is True at the padding; True means 'may attend', i.e. tokens != pad_id.")
def _pad_inverted(tokens, pad_id):
    return (tokens == pad_id).unsqueeze(1)


@mistake("padding_mask", "no_query_axis",
         "your mask has shape (B, T); return (B, 1, T) so that it broadcasts over the queries (unsqueeze(1)).")
def _pad_2d(tokens, pad_id):
    return tokens != pad_id


@mistake("padding_mask", "masks_queries",
         "your mask has shape (B, T, 1): it masks query rows instead of key columns; padding_mask is (B, 1, T).")
def _pad_rows(tokens, pad_id):
    return (tokens != pad_id).unsqueeze(-1)


@mistake("padding_mask", "pad_id_ignored", "you compared with 0 instead of the pad_id argument.")
def _pad_zero(tokens, pad_id):
    return (tokens != 0).unsqueeze(1)


def _pad_causal(tokens, pad_id):
    T = tokens.size(1)
    return (tokens != pad_id).unsqueeze(1), torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()


@mistake("decoder_self_attention_mask", "or", "you combined the padding and causal masks with OR; a key may be "
         "attended only if it is not padding AND not in the future: use &.")
def _dec_or(tokens, pad_id):
    pad, causal = _pad_causal(tokens, pad_id)
    return pad | causal


@mistake("decoder_self_attention_mask", "padding_rows",
         "your padding part masks the padded *queries* (rows) instead of the padded *keys* (columns).")
def _dec_rows(tokens, pad_id):
    pad, causal = _pad_causal(tokens, pad_id)
    return pad.transpose(1, 2) & causal


@mistake("decoder_self_attention_mask", "causal_only", "your mask is only the causal part; AND it with the padding mask.")
def _dec_causal_only(tokens, pad_id):
    pad, causal = _pad_causal(tokens, pad_id)
    return causal.expand(tokens.size(0), -1, -1)


@mistake("decoder_self_attention_mask", "padding_only", "your mask is only the padding part; AND it with the causal mask.")
def _dec_padding_only(tokens, pad_id):
    pad, causal = _pad_causal(tokens, pad_id)
    return pad.expand(-1, tokens.size(1), -1)


# ------------------------------------------------------------------ 06_add_norm

def _ln(x, gamma, beta, eps=1e-5, *, dim=-1, unbiased=False, eps_outside=False, center=True):
    mean = x.mean(dim=dim, keepdim=True) if center else torch.zeros_like(x)
    var = ((x - mean) ** 2).sum(dim=dim, keepdim=True) / (x.size(dim) - (1 if unbiased else 0))
    denom = var.sqrt() + eps if eps_outside else (var + eps).sqrt()
    return gamma * (x - mean) / denom + beta


@mistake("layer_norm", "wrong_axis",
         "you normalised over the wrong axis (dim=-2, across positions); LayerNorm normalises each position's "
         "features, over the last axis.")
def _ln_axis(x, gamma, beta, eps=1e-5):
    return _ln(x, gamma, beta, eps, dim=-2)


@mistake("layer_norm", "unbiased_variance",
         "you used the unbiased variance (divide by d_model - 1, torch.var's default); LayerNorm divides by d_model "
         "(unbiased=False).")
def _ln_unbiased(x, gamma, beta, eps=1e-5):
    return _ln(x, gamma, beta, eps, unbiased=True)


@mistake("layer_norm", "eps_outside_sqrt",
         "eps is added outside the square root, (x - mean) / (std + eps); it belongs inside: / sqrt(var + eps).")
def _ln_eps_outside(x, gamma, beta, eps=1e-5):
    return _ln(x, gamma, beta, eps, eps_outside=True)


@mistake("layer_norm", "no_mean",
         "you did not subtract the mean (that is RMSNorm); LayerNorm centres each vector first.")
def _ln_no_mean(x, gamma, beta, eps=1e-5):
    return gamma * x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() + beta


@mistake("layer_norm", "gamma_beta_swapped", "gamma and beta are swapped: LN(x) = gamma * x_hat + beta.")
def _ln_swapped(x, gamma, beta, eps=1e-5):
    return _ln(x, beta, gamma, eps)


class _AddNormMistake(nn.Module):
    """AddNorm wired wrongly according to `wiring`: f(norm, dropout, x, s) -> output."""

    wiring = staticmethod(lambda norm, drop, x, s: norm(x + drop(s)))

    def __init__(self, d_model, dropout=0.0):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, sublayer_out):
        return self.wiring(self.norm, self.dropout, x, sublayer_out)


def _add_norm_mistake(key: str, says: str, wiring) -> type:
    cls = type(f"AddNorm_{key}", (_AddNormMistake,), {"wiring": staticmethod(wiring)})
    return mistake("AddNorm", key, says)(cls)


_add_norm_mistake("norm_sublayer_only", "you normalised only the sublayer output, x + LN(sublayer_out); post-LN is "
                  "LN(x + sublayer_out).", lambda norm, drop, x, s: x + norm(drop(s)))
_add_norm_mistake("no_residual", "the residual connection is missing: LN(x + sublayer_out), not LN(sublayer_out).",
                  lambda norm, drop, x, s: norm(drop(s)))
_add_norm_mistake("norm_x_only", "you normalised x and added the sublayer output afterwards; post-LN is "
                  "LN(x + sublayer_out).", lambda norm, drop, x, s: norm(x) + drop(s))
_add_norm_mistake("dropout_on_sum", "dropout is applied to the sum x + sublayer_out; it applies to the sublayer "
                  "output only: LN(x + dropout(sublayer_out)).", lambda norm, drop, x, s: norm(drop(x + s)))
_add_norm_mistake("dropout_after_norm", "dropout is applied after the norm; it applies to the sublayer output, "
                  "before the residual sum.", lambda norm, drop, x, s: drop(norm(x + s)))
_add_norm_mistake("no_dropout", "the dropout is missing (or not an nn.Dropout that follows train()/eval()): "
                  "LN(x + dropout(sublayer_out)).", lambda norm, drop, x, s: norm(x + s))


class _FFNMistake(nn.Module):
    """FFN with the activation placed according to `shape`: f(linear1, linear2, x) -> output."""

    shape = staticmethod(lambda l1, l2, x: l2(torch.relu(l1(x))))

    def __init__(self, d_model, d_ff, dropout=0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x):
        return self.shape(self.linear1, self.linear2, x)


def _ffn_mistake(key: str, says: str, shape) -> type:
    cls = type(f"FFN_{key}", (_FFNMistake,), {"shape": staticmethod(shape)})
    return mistake("PositionwiseFeedForward", key, says)(cls)


_ffn_mistake("no_activation", "there is no ReLU between the two linear maps, so the FFN is just one linear map.",
             lambda l1, l2, x: l2(l1(x)))
_ffn_mistake("activation_at_output", "the ReLU is applied after the second linear map; FFN(x) = max(0, x W1 + b1) W2 + b2.",
             lambda l1, l2, x: torch.relu(l2(l1(x))))
_ffn_mistake("gelu", "you used GELU; the original Transformer's FFN uses ReLU.",
             lambda l1, l2, x: l2(nn.functional.gelu(l1(x))))
_ffn_mistake("residual_added", "you added the input (x + FFN(x)); the residual connection belongs to AddNorm, not "
             "to the feed-forward sublayer.", lambda l1, l2, x: x + l2(torch.relu(l1(x))))


# ------------------------------------------------------------------ 01_history

def _rnn(x, h0, W_xh, W_hh, b_h, *, act=torch.tanh, recurrent=True, transpose=False, shift=False):
    h = x.new_zeros(x.size(0), W_xh.size(1)) if h0 is None else h0
    W = W_hh.T if transpose else W_hh
    outputs = []
    for t in range(x.size(1)):
        if shift:
            outputs.append(h)
        h = act(x[:, t] @ W_xh + (h if recurrent or h0 is None else h0) @ W + b_h)
        if not shift:
            outputs.append(h)
    return torch.stack(outputs, dim=1), h


@mistake("rnn_forward", "no_recurrence",
         "every step uses h0 instead of the previous hidden state; h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h).")
def _rnn_no_recurrence(x, h0, W_xh, W_hh, b_h):
    return _rnn(x, h0, W_xh, W_hh, b_h, recurrent=False)


@mistake("rnn_forward", "outputs_shifted",
         "your outputs are h_0 .. h_{T-1}; they should be the new states h_1 .. h_T (append after the update).")
def _rnn_shifted(x, h0, W_xh, W_hh, b_h):
    return _rnn(x, h0, W_xh, W_hh, b_h, shift=True)


@mistake("rnn_forward", "no_tanh", "the tanh is missing: h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h).")
def _rnn_no_tanh(x, h0, W_xh, W_hh, b_h):
    return _rnn(x, h0, W_xh, W_hh, b_h, act=lambda z: z)


@mistake("rnn_forward", "W_hh_transposed", "you used W_hh transposed; the state is a row vector: h_{t-1} @ W_hh.")
def _rnn_transposed(x, h0, W_xh, W_hh, b_h):
    return _rnn(x, h0, W_xh, W_hh, b_h, transpose=True)


@mistake("rnn_forward", "sigmoid", "you used a sigmoid (or ReLU); the Elman RNN uses tanh.")
def _rnn_sigmoid(x, h0, W_xh, W_hh, b_h):
    return _rnn(x, h0, W_xh, W_hh, b_h, act=torch.sigmoid)


def _bahdanau(query, keys, values, W_q, W_k, w_v, mask=None, *, tanh=True, dim=-1, multiplicative=False,
              invert=False, tanh_after=False):
    if multiplicative:
        scores = ((query @ W_q).unsqueeze(1) * (keys @ W_k)).sum(-1)
    else:
        hidden = (query @ W_q).unsqueeze(1) + keys @ W_k  # (B, T, d_a)
        if tanh_after:
            scores = torch.tanh(hidden @ w_v)
        else:
            scores = (torch.tanh(hidden) if tanh else hidden) @ w_v  # (B, T)
    if mask is not None and invert:
        mask = ~mask
    weights = _softmax_rows(scores, mask, dim=dim)
    return (weights.unsqueeze(1) @ values).squeeze(1), weights


@mistake("additive_attention", "no_tanh", "the tanh is missing: score_j = tanh(query W_q + keys_j W_k) . w_v.")
def _add_no_tanh(query, keys, values, W_q, W_k, w_v, mask=None):
    return _bahdanau(query, keys, values, W_q, W_k, w_v, mask, tanh=False)


@mistake("additive_attention", "softmax_over_batch",
         "your softmax runs over the batch axis (dim=0); the weights of one query are over its T keys (dim=-1).")
def _add_softmax_batch(query, keys, values, W_q, W_k, w_v, mask=None):
    return _bahdanau(query, keys, values, W_q, W_k, w_v, mask, dim=0)


@mistake("additive_attention", "multiplicative",
         "you multiplied the projected query and key (a dot product); additive attention adds them, applies tanh "
         "and projects with w_v.")
def _add_multiplicative(query, keys, values, W_q, W_k, w_v, mask=None):
    return _bahdanau(query, keys, values, W_q, W_k, w_v, mask, multiplicative=True)


@mistake("additive_attention", "mask_inverted", "your mask is inverted: True means 'may attend'.")
def _add_inverted(query, keys, values, W_q, W_k, w_v, mask=None):
    return _bahdanau(query, keys, values, W_q, W_k, w_v, mask, invert=True)


class _AdditiveMistake(nn.Module):
    knobs: dict = {}

    def __init__(self, query_dim, key_dim, attn_dim):
        super().__init__()
        self.W_q = nn.Linear(query_dim, attn_dim, bias=False)
        self.W_k = nn.Linear(key_dim, attn_dim, bias=False)
        self.w_v = nn.Parameter(torch.zeros(attn_dim))

    def forward(self, query, keys, values, mask=None):
        return _bahdanau(query, keys, values, self.W_q.weight.T, self.W_k.weight.T, self.w_v, mask, **self.knobs)


def _additive_module_mistake(key: str, says: str, **knobs) -> type:
    cls = type(f"Additive_{key}", (_AdditiveMistake,), {"knobs": knobs})
    return mistake("AdditiveAttention", key, says)(cls)


_additive_module_mistake("no_tanh", "the tanh is missing: score_j = tanh(W_q(query) + W_k(keys_j)) . w_v.", tanh=False)
_additive_module_mistake("tanh_after_w_v", "the tanh is applied to the score; it goes before w_v: "
                         "tanh(W_q(query) + W_k(keys_j)) . w_v.", tanh_after=True)
_additive_module_mistake("mask_inverted", "your mask is inverted: True means 'may attend'.", invert=True)


# ------------------------------------------------------------------ 07_bert

def _mask_tokens(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15, generator=None, *,
                 split=(0.8, 0.9), skip_special=True, labels_everywhere=False, use_generator=True, low=0,
                 in_place=False, first_fraction=False):
    g = generator if use_generator else None
    rand = torch.rand(input_ids.shape, generator=g)
    if first_fraction:
        rand = torch.linspace(0, 1, input_ids.size(-1)).expand(input_ids.shape)
    special = torch.isin(input_ids, torch.tensor(special_token_ids, dtype=input_ids.dtype))
    chosen = (rand < mlm_probability) & (~special if skip_special else True)
    action = torch.rand(input_ids.shape, generator=g)
    random_ids = torch.randint(low, vocab_size, input_ids.shape, generator=g, dtype=input_ids.dtype)
    labels = input_ids.clone() if labels_everywhere else torch.where(chosen, input_ids, -100)
    inputs = input_ids if in_place else input_ids.clone()
    inputs[chosen & (action < split[0])] = mask_token_id
    replace = chosen & (action >= split[0]) & (action < split[1])
    inputs[replace] = random_ids[replace]
    return inputs, labels


@mistake("mask_tokens", "special_chosen", "special tokens ([CLS], [SEP], [PAD], ...) can be chosen; exclude every "
         "id in special_token_ids before choosing (torch.isin).")
def _mt_special(*args, **kwargs):
    return _mask_tokens(*args, **kwargs, skip_special=False)


@mistake("mask_tokens", "split", "the 80/10/10 split is wrong: of the chosen tokens 80% become [MASK], 10% a random "
         "token and 10% stay unchanged (draw one uniform number per token: < 0.8 mask, < 0.9 random, else keep).")
def _mt_all_masked(*args, **kwargs):
    return _mask_tokens(*args, **kwargs, split=(1.0, 1.0))


@mistake("mask_tokens", "split", "the 80/10/10 split is wrong: of the chosen tokens 80% become [MASK], 10% a random "
         "token and 10% stay unchanged (draw one uniform number per token: < 0.8 mask, < 0.9 random, else keep).")
def _mt_split_10_of_rest(*args, **kwargs):
    return _mask_tokens(*args, **kwargs, split=(0.8, 0.82))


@mistake("mask_tokens", "labels", "labels must be the original token where a token was chosen and -100 everywhere "
         "else (so that the loss ignores the other positions).")
def _mt_labels(*args, **kwargs):
    return _mask_tokens(*args, **kwargs, labels_everywhere=True)


@mistake("mask_tokens", "global_rng", "the random numbers do not come from `generator`; pass generator=generator to "
         "torch.rand / torch.randint so that results are reproducible.")
def _mt_global(*args, **kwargs):
    return _mask_tokens(*args, **kwargs, use_generator=False)


@mistake("mask_tokens", "in_place", "input_ids is modified in place; corrupt a copy (input_ids.clone()).")
def _mt_in_place(*args, **kwargs):
    return _mask_tokens(*args, **kwargs, in_place=True)


@mistake("mask_tokens", "positions", "the chosen tokens are not spread uniformly along the sequence; choose each "
         "token independently with probability mlm_probability.")
def _mt_first(*args, **kwargs):
    return _mask_tokens(*args, **kwargs, first_fraction=True)


@mistake("mask_tokens", "random_range", "random replacement tokens must be drawn uniformly from the whole vocabulary, "
         "torch.randint(vocab_size, ...).")
def _mt_range(*args, **kwargs):
    return _mask_tokens(*args, **kwargs, low=args[2] - 5)


class _BertEmbeddingsMistake(nn.Module):
    knobs: dict = {}

    def __init__(self, vocab_size, d_model, max_len, type_vocab_size):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, d_model)
        self.position_embeddings = nn.Embedding(max_len, d_model)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, d_model)
        self.norm = nn.LayerNorm(d_model, eps=1e-12)

    def forward(self, input_ids, token_type_ids=None):
        k = self.knobs
        T = input_ids.size(1)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        start = 1 if k.get("positions_from_1") else 0
        pos = torch.arange(start, start + T, device=input_ids.device).clamp_max(self.position_embeddings.num_embeddings - 1)
        words = self.word_embeddings(input_ids)
        if k.get("norm_words_only"):
            words = self.norm(words)
        x = words + (0 if k.get("no_position") else self.position_embeddings(pos))
        x = x + (0 if k.get("no_segment") else self.token_type_embeddings(token_type_ids))
        return x if k.get("no_norm") or k.get("norm_words_only") else self.norm(x)


def _bert_mistake(key: str, says: str) -> type:
    cls = type(f"BertEmbeddings_{key}", (_BertEmbeddingsMistake,), {"knobs": {key: True}})
    return mistake("BertEmbeddings", key, says)(cls)


_bert_mistake("no_norm", "the LayerNorm is missing: LayerNorm(token + position + segment embeddings).")
_bert_mistake("no_position", "the position embeddings are missing (position_embeddings(arange(T))).")
_bert_mistake("no_segment", "the segment (token type) embeddings are missing.")
_bert_mistake("positions_from_1", "your positions start at 1; the first token has position 0.")
_bert_mistake("norm_words_only", "you normalised only the word embeddings; the LayerNorm acts on the sum of all three.")


def _mlm(logits, labels, *, reduce="mean_used", log=True):
    used = labels != -100
    logp = torch.log_softmax(logits, dim=-1) if log else logits
    picked = -logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1) * used  # (...,)
    if reduce == "sum":
        return picked.sum()
    return picked.sum() / (used.numel() if reduce == "mean_all" else used.sum())


@mistake("masked_lm_loss", "mean_over_all", "you averaged over every position; average over the positions whose label "
         "is not -100 only.")
def _mlm_mean_all(logits, labels):
    return _mlm(logits, labels, reduce="mean_all")


@mistake("masked_lm_loss", "sum", "you returned the sum; the loss is the mean over the positions with a label.")
def _mlm_sum(logits, labels):
    return _mlm(logits, labels, reduce="sum")


@mistake("masked_lm_loss", "no_log_softmax", "the logits are used as log-probabilities; apply log_softmax over the "
         "vocabulary axis first.")
def _mlm_no_log(logits, labels):
    return _mlm(logits, labels, log=False)


@mistake("masked_lm_loss", "softmax_not_log", "you used -softmax(logits)[label]; cross-entropy is "
         "-log_softmax(logits)[label].")
def _mlm_softmax(logits, labels):
    used = labels != -100
    p = torch.softmax(logits, dim=-1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return -(p * used).sum() / used.sum()


# ------------------------------------------------------------------ 08_vit

def _patchify(images, patch_size, *, order="c_p_p", column_major=False, permute=True):
    B, C, H, W = images.shape
    P = patch_size
    if not permute:
        return images.reshape(B, (H // P) * (W // P), C * P * P)
    x = images.reshape(B, C, H // P, P, W // P, P)
    grid = (0, 4, 2) if column_major else (0, 2, 4)
    inner = {"c_p_p": (1, 3, 5), "p_p_c": (3, 5, 1), "c_pw_ph": (1, 5, 3)}[order]
    return x.permute(*grid, *inner).reshape(B, (H // P) * (W // P), C * P * P)


@mistake("patchify", "channels_last", "each patch is flattened in (P, P, C) order; flatten it in (C, P, P) order "
         "(all of channel 0, then channel 1, ...), the layout of a Conv2d weight.")
def _pf_channels_last(images, patch_size):
    return _patchify(images, patch_size, order="p_p_c")


@mistake("patchify", "column_order", "your patches go column by column; order them row by row (left to right, then "
         "top to bottom).")
def _pf_columns(images, patch_size):
    return _patchify(images, patch_size, column_major=True)


@mistake("patchify", "no_permute", "you reshaped the image straight to (B, N, C*P*P); a patch is a P x P square, so "
         "split H and W into (H/P, P) and (W/P, P) and permute before flattening.")
def _pf_no_permute(images, patch_size):
    return _patchify(images, patch_size, permute=False)


@mistake("patchify", "patch_transposed", "each patch is transposed (flattened column by column); flatten each "
         "channel's P x P square row by row.")
def _pf_transposed(images, patch_size):
    return _patchify(images, patch_size, order="c_pw_ph")


def _unpatchify(patches, patch_size, height, width, *, order="c_p_p", column_major=False):
    B, N, D = patches.shape
    P = patch_size
    C = D // (P * P)
    gh, gw = height // P, width // P
    shape = {"c_p_p": (C, P, P), "p_p_c": (P, P, C)}[order]
    x = patches.reshape(B, gw, gh, *shape) if column_major else patches.reshape(B, gh, gw, *shape)
    if column_major:
        x = x.transpose(1, 2)
    if order == "p_p_c":
        x = x.permute(0, 1, 2, 5, 3, 4)  # (B, gh, gw, C, P, P)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(B, C, height, width)


@mistake("unpatchify", "channels_last", "you read each patch as (P, P, C); patchify flattens in (C, P, P) order.")
def _upf_channels_last(patches, patch_size, height, width):
    return _unpatchify(patches, patch_size, height, width, order="p_p_c")


@mistake("unpatchify", "column_order", "you placed the patches column by column; they come row by row.")
def _upf_columns(patches, patch_size, height, width):
    return _unpatchify(patches, patch_size, height, width, column_major=True)


@mistake("unpatchify", "no_permute", "you reshaped (B, N, C*P*P) straight to (B, C, H, W); put each P x P square "
         "back in place (reshape to (B, H/P, W/P, C, P, P) and permute).")
def _upf_no_permute(patches, patch_size, height, width):
    B, N, D = patches.shape
    return patches.reshape(B, D // (patch_size ** 2), height, width)


class _PatchEmbeddingMistake(nn.Module):
    knobs: dict = {}

    def __init__(self, image_size, patch_size, in_channels, d_model):
        super().__init__()
        H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.patch_size = patch_size
        self.proj = nn.Linear(in_channels * patch_size ** 2, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embedding = nn.Parameter(torch.zeros(1, (H // patch_size) * (W // patch_size) + 1, d_model))

    def forward(self, images):
        k = self.knobs
        x = self.proj(_patchify(images, self.patch_size, order="p_p_c" if k.get("channels_last") else "c_p_p"))
        cls = self.cls_token.expand(x.size(0), -1, -1)
        if k.get("cls_no_position"):
            return torch.cat([cls, x + self.pos_embedding[:, 1:]], dim=1)
        x = torch.cat([x, cls] if k.get("cls_last") else [cls, x], dim=1)
        return x if k.get("no_position") else x + self.pos_embedding


def _patch_mistake(key: str, says: str) -> type:
    cls = type(f"PatchEmbedding_{key}", (_PatchEmbeddingMistake,), {"knobs": {key: True}})
    return mistake("PatchEmbedding", key, says)(cls)


_patch_mistake("cls_last", "the class token is appended at the end; it comes first: [x_class; x_p^1 E; ...].")
_patch_mistake("cls_no_position", "the class token gets no position embedding; add pos_embedding to the whole sequence "
               "(N + 1 rows, class token included).")
_patch_mistake("no_position", "the position embeddings are missing.")
_patch_mistake("channels_last", "the patches are flattened in (P, P, C) order; use (C, P, P) as in patchify.")


# ------------------------------------------------------------------ 09_warmup

def _noam(step, d_model, warmup_steps, *, shift=0, warm_exp=-1.5, d_exp=-0.5, pick=min):
    step = step + shift
    if step == 0:
        return 0.0
    return d_model ** d_exp * pick(step ** -0.5, step * warmup_steps ** warm_exp)


@mistake("noam_lr", "off_by_one", "your schedule is one step ahead (step + 1); count steps from 0 as given, with "
         "step 0 giving 0.")
def _noam_off(step, d_model, warmup_steps):
    return _noam(step, d_model, warmup_steps, shift=1)


@mistake("noam_lr", "warmup_exponent", "the warm-up term is step * warmup_steps^-1.5 (so both terms meet at step = "
         "warmup_steps); your exponent differs.")
def _noam_warm(step, d_model, warmup_steps):
    return _noam(step, d_model, warmup_steps, warm_exp=-0.5)


@mistake("noam_lr", "no_d_model", "the factor d_model^-0.5 is missing.")
def _noam_no_d(step, d_model, warmup_steps):
    return _noam(step, d_model, warmup_steps, d_exp=0.0)


@mistake("noam_lr", "d_model_sqrt", "you multiplied by sqrt(d_model); the factor is d_model^-0.5.")
def _noam_sqrt(step, d_model, warmup_steps):
    return _noam(step, d_model, warmup_steps, d_exp=0.5)


@mistake("noam_lr", "max_not_min", "you took the max of the two terms; the schedule is their min.")
def _noam_max(step, d_model, warmup_steps):
    return _noam(step, d_model, warmup_steps, pick=max)


def _warmup(step, base_lr, warmup_steps, total_steps, min_lr=0.0, *, decay="cosine", shift=0, clamp=True,
            from_start=False, ignore_min=False, full_period=False):
    floor = 0.0 if ignore_min else min_lr
    if step + shift < warmup_steps:
        return base_lr * (step + shift) / warmup_steps
    span = total_steps if from_start else total_steps - warmup_steps
    progress = (step if from_start else step - warmup_steps) / span if span > 0 else 1.0
    progress = min(1.0, progress) if clamp else progress
    if decay == "linear":
        remaining = 1.0 - progress
    else:
        remaining = 0.5 * (1.0 + math.cos((2 if full_period else 1) * math.pi * progress))
    return floor + (base_lr - floor) * remaining


def _schedule_mistakes(item: str, decay: str) -> None:
    def register(key: str, says: str, **knobs) -> None:
        def wrong(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
            return _warmup(step, base_lr, warmup_steps, total_steps, min_lr, decay=decay, **knobs)
        mistake(item, key, says)(wrong)
    register("warmup_off_by_one", "your warm-up is one step ahead: lr = base_lr * step / warmup_steps, with 0 at "
             "step 0 and base_lr reached at step = warmup_steps.", shift=1)
    register("decay_from_step_0", "the decay's progress must count from the end of the warm-up: "
             "p = (step - warmup_steps) / (total_steps - warmup_steps).", from_start=True)
    register("min_lr_ignored", "the schedule decays to 0 instead of min_lr: lr = min_lr + (base_lr - min_lr) * ...",
             ignore_min=True)
    register("no_clamp_after_total", "after total_steps the learning rate must stay at min_lr (clamp the progress "
             "at 1).", clamp=False)


_schedule_mistakes("warmup_linear_lr", "linear")
_schedule_mistakes("warmup_cosine_lr", "cosine")


@mistake("warmup_cosine_lr", "full_period", "you used a full cosine period, cos(2 pi p); the decay is half a period: "
         "(1 + cos(pi p)) / 2.")
def _cos_full(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    return _warmup(step, base_lr, warmup_steps, total_steps, min_lr, full_period=True)


@mistake("warmup_cosine_lr", "linear_decay", "your decay is linear; use half a cosine: (1 + cos(pi p)) / 2.")
def _cos_linear(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    return _warmup(step, base_lr, warmup_steps, total_steps, min_lr, decay="linear")


# ------------------------------------------------------------------ 10_transformer

def _post_ln(norm, x, sublayer_out):
    return norm(x + sublayer_out)


class _EncoderLayerMistake(nn.Module):
    knobs: dict = {}

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
        super().__init__()
        from transformer_ref.layers import LayerNorm, PositionwiseFeedForward
        from transformer_ref.multihead import MultiHeadAttention
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff)
        self.norm1, self.norm2 = LayerNorm(d_model), LayerNorm(d_model)

    def forward(self, x, mask=None):
        k = self.knobs
        mask = None if k.get("mask_ignored") else mask
        norm1, norm2 = (self.norm2, self.norm1) if k.get("norms_swapped") else (self.norm1, self.norm2)
        if k.get("pre_ln"):
            h = norm1(x)
            x = x + self.self_attn(h, h, h, mask)[0]
            return x + self.feed_forward(norm2(x))
        attn = self.self_attn(x, x, x, mask)[0]
        h = norm1(attn) if k.get("no_residual_attention") else norm1(x + attn)
        return norm2(h + self.feed_forward(x if k.get("ffn_on_input") else h))


def _encoder_mistake(key: str, says: str) -> type:
    cls = type(f"EncoderLayer_{key}", (_EncoderLayerMistake,), {"knobs": {key: True}})
    return mistake("EncoderLayer", key, says)(cls)


_encoder_mistake("pre_ln", "you wrote a pre-LN layer, x + Sublayer(LN(x)); this exercise is the original post-LN "
                 "layer, LN(x + Sublayer(x)).")
_encoder_mistake("no_residual_attention", "the residual connection around self-attention is missing: "
                 "norm1(x + self_attn(x, x, x)).")
_encoder_mistake("ffn_on_input", "the feed-forward network reads the layer's input x; it reads the output of the "
                 "attention block, norm1(x + attention).")
_encoder_mistake("norms_swapped", "norm1 and norm2 are swapped: norm1 follows self-attention, norm2 the feed-forward "
                 "network.")
_encoder_mistake("mask_ignored", "the mask is not passed to self-attention.")


class _DecoderLayerMistake(nn.Module):
    knobs: dict = {}

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
        super().__init__()
        from transformer_ref.layers import LayerNorm, PositionwiseFeedForward
        from transformer_ref.multihead import MultiHeadAttention
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.cross_attn = MultiHeadAttention(d_model, num_heads)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff)
        self.norm1, self.norm2, self.norm3 = LayerNorm(d_model), LayerNorm(d_model), LayerNorm(d_model)

    def forward(self, x, memory, self_mask=None, memory_mask=None):
        k = self.knobs
        if k.get("pre_ln"):
            h = self.norm1(x)
            x = x + self.self_attn(h, h, h, self_mask)[0]
            h = self.norm2(x)
            x = x + self.cross_attn(h, memory, memory, memory_mask)[0]
            return x + self.feed_forward(self.norm3(x))
        self_mask_used = None if k.get("self_mask_ignored") else self_mask

        def self_block(y):
            return self.norm1(y + self.self_attn(y, y, y, self_mask_used)[0])

        def cross_block(y):
            if k.get("cross_attends_to_x"):
                return self.norm2(y + self.cross_attn(y, y, y, self_mask)[0])
            return self.norm2(y + self.cross_attn(y, memory, memory, memory_mask)[0])
        x = self_block(cross_block(x)) if k.get("cross_first") else cross_block(self_block(x))
        if k.get("no_residual_ffn"):
            return self.norm3(self.feed_forward(x))
        return self.norm3(x + self.feed_forward(x))


def _decoder_mistake(key: str, says: str) -> type:
    cls = type(f"DecoderLayer_{key}", (_DecoderLayerMistake,), {"knobs": {key: True}})
    return mistake("DecoderLayer", key, says)(cls)


_decoder_mistake("pre_ln", "you wrote a pre-LN layer, x + Sublayer(LN(x)); this exercise is the post-LN layer, "
                 "LN(x + Sublayer(x)).")
_decoder_mistake("cross_attends_to_x", "cross-attention takes its keys and values from x; they come from the "
                 "encoder output: cross_attn(x, memory, memory, memory_mask).")
_decoder_mistake("cross_first", "cross-attention comes before self-attention; the order is masked self-attention, "
                 "cross-attention, feed-forward.")
_decoder_mistake("self_mask_ignored", "self_mask is not passed to self-attention, so positions see the future.")
_decoder_mistake("no_residual_ffn", "the residual connection around the feed-forward network is missing: "
                 "norm3(x + feed_forward(x)).")


@torch.no_grad()
def _greedy(model, src, bos_id, eos_id, max_len, *, position=-1, stop="all", pad_finished=True, check_eos=True,
            steps=None):
    memory = model.encode(src)
    tokens = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)
    finished = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    for _ in range(max_len - 1 if steps is None else steps):
        nxt = model.decode(tokens, memory, src)[:, position].argmax(-1)
        if pad_finished:
            nxt = nxt.masked_fill(finished, model.pad_id)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        finished |= nxt == eos_id
        if check_eos and (finished.all() if stop == "all" else finished.any()):
            break
    return tokens


@mistake("greedy_decode", "first_position", "you took the prediction at the first position, logits[:, 0]; the next "
         "token is predicted at the last position, logits[:, -1].")
def _greedy_first(model, src, bos_id, eos_id, max_len):
    return _greedy(model, src, bos_id, eos_id, max_len, position=0)


@mistake("greedy_decode", "stop_when_any", "you stopped when the first sequence produced eos_id; continue until every "
         "sequence has (or max_len is reached).")
def _greedy_any(model, src, bos_id, eos_id, max_len):
    return _greedy(model, src, bos_id, eos_id, max_len, stop="any")


@mistake("greedy_decode", "no_pad_after_eos", "a sequence that has finished keeps getting real tokens; after its "
         "eos_id put model.pad_id.")
def _greedy_no_pad(model, src, bos_id, eos_id, max_len):
    return _greedy(model, src, bos_id, eos_id, max_len, pad_finished=False)


@mistake("greedy_decode", "never_stops", "you never stop at eos_id; stop as soon as every sequence has produced it.")
def _greedy_never(model, src, bos_id, eos_id, max_len):
    return _greedy(model, src, bos_id, eos_id, max_len, check_eos=False)


@mistake("greedy_decode", "max_len_off_by_one", "your output can be max_len + 1 tokens long; max_len counts the bos "
         "token, so at most max_len - 1 tokens are generated.")
def _greedy_long(model, src, bos_id, eos_id, max_len):
    return _greedy(model, src, bos_id, eos_id, max_len, steps=max_len)

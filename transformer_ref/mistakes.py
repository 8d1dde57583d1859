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

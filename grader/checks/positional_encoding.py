"""Checks for assignment 02_positional_encoding: sinusoidal_positional_encoding, relative_position_index,
relative_attention."""

from __future__ import annotations

import math

import torch

from grader.checks.cases import Case, causal, random_mask, randn
from grader.checks.history import softmax_rows
from grader.checks.item import Item, Mistake, Reference
from grader.checks.report import assert_passes
from grader.checks.shortcuts import REF_ATTENTION, TORCH_ATTENTION, TORCH_ATTENTION_OPS

ASSIGNMENT = "02_positional_encoding"

REF_POSITIONAL = tuple(f"transformer_ref.positional.{n}" for n in (
    "sinusoidal_positional_encoding", "SinusoidalPositionalEncoding.forward", "relative_position_index",
    "relative_attention", "relative_logits_naive", "relative_logits_skewed", "RelativeMultiHeadAttention.forward"))


# ---------------------------------------------------------------- sinusoidal_positional_encoding

def _sinusoidal_cases(g: torch.Generator, seed: int) -> list[Case]:
    extra = int(torch.randint(2, 40, (1,), generator=g))
    return [Case("max_len 10, d_model 8", (10, 8), group="basic sizes"),
            Case("max_len 1, d_model 2", (1, 2), group="one position, d_model 2"),
            Case("max_len 50, d_model 16", (50, 16), group="long and wide tables"),
            Case("max_len 6, d_model 64", (6, 64), group="long and wide tables"),
            Case(f"max_len {extra}, d_model 12", (extra, 12), group="basic sizes")]


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


def _pe_sin_cos_swapped(max_len, d_model):
    a = _angles(max_len, d_model)
    return _interleave(torch.cos(a), torch.sin(a), d_model)


def _pe_concatenated(max_len, d_model):
    a = _angles(max_len, d_model)
    return torch.cat([torch.sin(a), torch.cos(a[:, : d_model // 2])], dim=1).float()


def _pe_exponent_i(max_len, d_model):
    a = _angles(max_len, d_model, exponent="i")
    return _interleave(torch.sin(a), torch.cos(a), d_model)


def _pe_column_exponent(max_len, d_model):
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    angle = pos / 10000.0 ** (torch.arange(d_model, dtype=torch.float64) / d_model)
    pe = torch.where(torch.arange(d_model) % 2 == 0, torch.sin(angle), torch.cos(angle))
    return pe.float()


def _pe_positions_from_1(max_len, d_model):
    a = _angles(max_len, d_model, start=1)
    return _interleave(torch.sin(a), torch.cos(a), d_model)


def _pe_multiplied(max_len, d_model):
    a = _angles(max_len, d_model, multiply=True)
    return _interleave(torch.sin(a), torch.cos(a), d_model)


SINUSOIDAL_POSITIONAL_ENCODING = Item(
    "sinusoidal_positional_encoding", ASSIGNMENT, "function", _sinusoidal_cases,
    Reference("positional", "sinusoidal_positional_encoding"), REF_POSITIONAL, outputs=("PE",),
    tol={torch.float32: (1e-4, 1e-4)},
    mistakes=(
        Mistake("sin_cos_swapped", "sin and cos are swapped: even columns (2i) hold sin(pos / 10000^(2i/d_model)), "
                "odd columns (2i+1) the cos.", _pe_sin_cos_swapped),
        Mistake("concatenated", "you concatenated [sin | cos] (all sines in the first half, all cosines in the "
                "second); the paper interleaves them: column 2i is a sine, column 2i+1 the cosine of the same "
                "frequency.", _pe_concatenated),
        Mistake("exponent_i", "your frequencies use 10000^(i/d_model) with i the pair index; the exponent is "
                "2i/d_model (equivalently the even column index 2i divided by d_model).", _pe_exponent_i),
        Mistake("column_exponent", "each column uses its own index in the exponent (10000^(j/d_model) for column "
                "j); the sine and cosine of a pair (2i, 2i+1) share one frequency, 10000^(2i/d_model).",
                _pe_column_exponent),
        Mistake("positions_from_1", "your positions start at 1; they start at 0 (the first row is sin(0) = 0, "
                "cos(0) = 1).", _pe_positions_from_1),
        Mistake("multiplied", "you multiplied the position by 10000^(2i/d_model); divide by it: "
                "pos / 10000^(2i/d_model).", _pe_multiplied),
    ),
    hints=("Position pos gets d_model numbers: column 2i is sin(pos / 10000^(2i / d_model)) and column 2i + 1 the "
           "cosine of the same angle, so each pair of columns is one frequency.",
           "Make the positions a column (max_len, 1) and the even indices 2i a row (d_model / 2,); one broadcast "
           "division gives every angle (max_len, d_model / 2). Fill the even columns (step-2 slicing from 0) with the "
           "sines and the odd ones with the cosines; compute in float64 and return float32."))


def check_sinusoidal_positional_encoding(impl, seeds=(0,), cuda=False):
    """Check a submission of sinusoidal_positional_encoding(max_len, d_model) -> PE (max_len, d_model) against
    transformer_ref (each seed, and CUDA copies when cuda=True and a GPU is present); raise CheckFailed with
    what was expected, what came back and the likely mistake."""
    assert_passes(SINUSOIDAL_POSITIONAL_ENCODING, impl, seeds, cuda)


# ---------------------------------------------------------------- relative_position_index

def _relative_index_cases(g: torch.Generator, seed: int) -> list[Case]:
    q_len, k_len = (int(n) for n in torch.randint(1, 12, (2,), generator=g))
    return [Case("q_len 5, k_len 5, max_distance 2", (5, 5, 2), group="basic sizes"),
            Case("q_len 1, k_len 1, max_distance 3", (1, 1, 3), group="basic sizes"),
            Case("q_len 3, k_len 7, max_distance 2", (3, 7, 2), group="q_len != k_len"),
            Case("q_len 6, k_len 4, max_distance 1", (6, 4, 1), group="q_len != k_len"),
            Case("q_len 4, k_len 4, max_distance 0", (4, 4, 0), group="max_distance 0 or beyond the lengths"),
            Case("q_len 4, k_len 6, max_distance 10", (4, 6, 10), group="max_distance 0 or beyond the lengths"),
            Case(f"q_len {q_len}, k_len {k_len}, max_distance 3", (q_len, k_len, 3), group="basic sizes")]


def _distance(q_len: int, k_len: int) -> torch.Tensor:
    return torch.arange(k_len)[None, :] - torch.arange(q_len)[:, None]  # (q_len, k_len): j - i


def _rel_i_minus_j(q_len, k_len, max_distance):
    return (-_distance(q_len, k_len)).clamp(-max_distance, max_distance) + max_distance


def _rel_not_shifted(q_len, k_len, max_distance):
    return _distance(q_len, k_len).clamp(-max_distance, max_distance)


def _rel_not_clipped(q_len, k_len, max_distance):
    return _distance(q_len, k_len) + max_distance


def _rel_shift_then_clip(q_len, k_len, max_distance):
    return (_distance(q_len, k_len) + max_distance).clamp(-max_distance, max_distance)


RELATIVE_POSITION_INDEX = Item(
    "relative_position_index", ASSIGNMENT, "function", _relative_index_cases,
    Reference("positional", "relative_position_index"), REF_POSITIONAL, outputs=("index",),
    mistakes=(
        Mistake("i_minus_j", "you used i - j (query minus key); the relative position of key j seen from query i "
                "is j - i.", _rel_i_minus_j),
        Mistake("not_shifted", "you clipped j - i to [-k, k] but did not add k, so the indices can be negative; "
                "shift them to 0 .. 2k.", _rel_not_shifted),
        Mistake("not_clipped", "you did not clip j - i to [-max_distance, max_distance] before shifting it.",
                _rel_not_clipped),
        Mistake("shift_then_clip", "you added k before clipping to [-k, k]; clip j - i to [-k, k] first, then "
                "add k.", _rel_shift_then_clip),
    ),
    hints=("Entry (i, j) is the distance j - i from query i to key j, clipped to [-max_distance, max_distance] and "
           "shifted by max_distance, so that it indexes a table of 2 * max_distance + 1 embeddings.",
           "Make torch.arange(q_len) a column and torch.arange(k_len) a row: their difference broadcasts to (q_len, "
           "k_len). Then clamp it and add max_distance."))


def check_relative_position_index(impl, seeds=(0,), cuda=False):
    """Check a submission of relative_position_index(q_len, k_len, max_distance) -> index (q_len, k_len) against
    transformer_ref (each seed, and CUDA copies when cuda=True and a GPU is present); raise CheckFailed with
    what was expected, what came back and the likely mistake."""
    assert_passes(RELATIVE_POSITION_INDEX, impl, seeds, cuda)


# ---------------------------------------------------------------- relative_attention

def _relative_attention_cases(g: torch.Generator, seed: int) -> list[Case]:
    def args(batch: tuple, T_q: int, T_k: int, d_k: int, d_v: int, dtype: torch.dtype = torch.float32) -> tuple:
        return (randn(g, *batch, T_q, d_k, dtype=dtype, scale=1.5), randn(g, *batch, T_k, d_k, dtype=dtype, scale=1.5),
                randn(g, *batch, T_k, d_v, dtype=dtype), randn(g, T_q, T_k, d_k, dtype=dtype, scale=1.5),
                randn(g, T_q, T_k, d_v, dtype=dtype))
    return [Case("q (2, 4, 4), k (2, 4, 4), v (2, 4, 3)", args((2,), 4, 4, 4, 3), group="basic shapes"),
            Case("q (3, 5), k (7, 5): T_q != T_k", args((), 3, 7, 5, 2), group="basic shapes"),
            Case("q (2, 2, 5, 4) with heads, mask (5, 5) causal", args((2, 2), 5, 5, 4, 4), {"mask": causal(5)},
                 group="heads and a causal mask"),
            Case("float64, q (1, 6, 3), mask (1, 6, 6) with a fully masked row", args((1,), 6, 6, 3, 5, torch.float64),
                 {"mask": random_mask(g, 1, 6, 6)}, group="float64 and a fully masked row")]


def _shaw(q, k, v, rel_k, rel_v, mask=None, *, use_rel_k=True, use_rel_v=True, scale_rel=True, scale=True,
          transpose_rel=False):
    """Relative attention (Shaw et al. 2018) with one thing done the wrong way (the keyword arguments)."""
    if transpose_rel:
        rel_k, rel_v = rel_k.transpose(0, 1), rel_v.transpose(0, 1)
    d = math.sqrt(q.size(-1)) if scale else 1.0
    scores = q @ k.transpose(-2, -1) / d
    if use_rel_k:
        scores = scores + torch.einsum("...qd,qkd->...qk", q, rel_k) / (d if scale_rel else 1.0)
    weights = softmax_rows(scores, mask)
    out = weights @ v
    if use_rel_v:
        out = out + torch.einsum("...qk,qkd->...qd", weights, rel_v)
    return out, weights


def _shaw_no_rel_v(q, k, v, rel_k, rel_v, mask=None):
    return _shaw(q, k, v, rel_k, rel_v, mask, use_rel_v=False)


def _shaw_no_rel_k(q, k, v, rel_k, rel_v, mask=None):
    return _shaw(q, k, v, rel_k, rel_v, mask, use_rel_k=False)


def _shaw_rel_k_unscaled(q, k, v, rel_k, rel_v, mask=None):
    return _shaw(q, k, v, rel_k, rel_v, mask, scale_rel=False)


def _shaw_no_scale(q, k, v, rel_k, rel_v, mask=None):
    return _shaw(q, k, v, rel_k, rel_v, mask, scale=False)


def _shaw_rel_transposed(q, k, v, rel_k, rel_v, mask=None):
    return _shaw(q, k, v, rel_k, rel_v, mask, transpose_rel=True)


RELATIVE_ATTENTION = Item(
    "relative_attention", ASSIGNMENT, "function", _relative_attention_cases,
    Reference("positional", "relative_attention"), TORCH_ATTENTION + REF_ATTENTION + REF_POSITIONAL,
    outputs=("output", "weights"), forbidden_ops=TORCH_ATTENTION_OPS,
    mistakes=(
        Mistake("no_rel_v", "your output leaves out the value term: z_i = sum_j w_ij (v_j + a^V_ij), not "
                "sum_j w_ij v_j.", _shaw_no_rel_v),
        Mistake("no_rel_k", "your scores leave out the key term: e_ij = q_i . (k_j + a^K_ij) / sqrt(d_k).",
                _shaw_no_rel_k),
        Mistake("rel_k_unscaled", "only q . k is divided by sqrt(d_k); the relative term q . a^K is part of the "
                "score and is divided too.", _shaw_rel_k_unscaled),
        Mistake("no_scale", "your scores are not divided by sqrt(d_k).", _shaw_no_scale),
        Mistake("rel_transposed", "you used a_ji instead of a_ij: rel_k[i, j] belongs to query i and key j (no "
                "transpose).", _shaw_rel_transposed),
    ),
    hints=("Shaw et al. add a learned vector per distance: to the score of (i, j) the term q_i . rel_k[i, j], to the "
           "output of query i the sum over j of w_ij rel_v[i, j]. The rest is scaled dot-product attention with the "
           "mask.",
           "rel_k and rel_v are (T_q, T_k, d): the score term is an einsum that sums over d, added to q k^T before the"
           " division by sqrt(d_k); the output term is an einsum that sums the weights times rel_v over the keys. Mask"
           " as in Exercise 3."))


def check_relative_attention(impl, seeds=(0,), cuda=False):
    """Check a submission of relative_attention(q, k, v, rel_k, rel_v, mask=None) -> (output, weights) against
    transformer_ref on random inputs (each seed, and CUDA copies when cuda=True and a GPU is present); raise
    CheckFailed with what was expected, what came back and the likely mistake."""
    assert_passes(RELATIVE_ATTENTION, impl, seeds, cuda)


ITEMS = (SINUSOIDAL_POSITIONAL_ENCODING, RELATIVE_POSITION_INDEX, RELATIVE_ATTENTION)

"""Checks for assignment 05_masking: causal_mask, padding_mask, decoder_self_attention_mask."""

from __future__ import annotations

import torch

from grader.checks.cases import META, Case, tokens
from grader.checks.item import Item, Mistake, Reference
from grader.checks.report import assert_passes
from grader.checks.structure import explain_mask

ASSIGNMENT = "05_masking"


# ---------------------------------------------------------------- causal_mask

def _causal_cases(g: torch.Generator, seed: int) -> list[Case]:
    T = int(torch.randint(2, 12, (1,), generator=g))
    return [Case("T = 4", (4,), group="square masks"), Case("T = 1", (1,), group="square masks"),
            Case(f"T = {T}", (T,), group="square masks"),
            Case("T_q = 3, T_k = 5 (queries are the last 3 of 5 positions)", (3, 5), group="T_q != T_k"),
            Case("T_q = 1, T_k = 6", (1, 6), group="T_q != T_k"),
            Case("T = 3, device='cpu'", (3,), {"device": torch.device("cpu")}, group="the device argument"),
            Case("T_q = 2, T_k = 4, device='meta'", (2, 4), {"device": META}, group="the device argument")]


def _causal_inverted(T_q, T_k=None, device=None):
    T_k = T_q if T_k is None else T_k
    return ~torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(T_k - T_q)


def _causal_no_diagonal(T_q, T_k=None, device=None):
    T_k = T_q if T_k is None else T_k
    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(T_k - T_q - 1)


def _causal_top_left(T_q, T_k=None, device=None):
    T_k = T_q if T_k is None else T_k
    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril()


def _causal_float_mask(T_q, T_k=None, device=None):
    T_k = T_q if T_k is None else T_k
    return torch.ones(T_q, T_k, device=device).tril(T_k - T_q)


CAUSAL_MASK = Item(
    "causal_mask", ASSIGNMENT, "function", _causal_cases, Reference("masks", "causal_mask"),
    ("transformer_ref.masks.causal_mask", "transformer_ref.masks.decoder_self_attention_mask",
     "torch.nn.Transformer.generate_square_subsequent_mask"), outputs=("mask",),
    mistakes=(
        Mistake("inverted", "your mask is inverted (True above the diagonal, i.e. nn.MultiheadAttention's "
                "True = ignore); in this course True = may attend, so the lower triangle is True.", _causal_inverted),
        Mistake("no_diagonal", "your mask hides the diagonal: a position may attend to itself (j <= i, not j < i).",
                _causal_no_diagonal),
        Mistake("top_left", "with T_k > T_q the queries are the last T_q positions: query i may see keys "
                "j <= i + (T_k - T_q); your mask is aligned to the top-left corner.", _causal_top_left),
        Mistake("float_mask", "your mask is a float tensor; return a bool tensor (True = may attend).",
                _causal_float_mask),
    ), explain=explain_mask,
    hints=("Query i may see key j when j <= i + (T_k - T_q): that is the lower triangle of a (T_q, T_k) matrix, with "
           "its diagonal shifted by T_k - T_q.",
           "Start from a (T_q, T_k) bool tensor of ones made on `device`; torch.tril keeps the entries with j <= i + "
           "diagonal: choose the diagonal from T_q and T_k (T_k defaults to T_q)."))


def check_causal_mask(impl, seeds=(0,), cuda=False):
    """Check a submission of causal_mask(T_q, T_k=None, device=None) -> bool mask (T_q, T_k) against
    transformer_ref (each seed, and on the GPU when cuda=True and one is present); raise CheckFailed with what
    was expected, what came back and the likely mistake."""
    assert_passes(CAUSAL_MASK, impl, seeds, cuda)


# ---------------------------------------------------------------- padding_mask

def _padding_cases(g: torch.Generator, seed: int) -> list[Case]:
    """Token batches for padding_mask and decoder_self_attention_mask; the last ones on the meta device (a
    shape, a dtype and a device, no values): the mask must be made on the tokens' device, with torch operations."""
    return [Case("tokens (3, 5), pad_id 0", (tokens(g, 3, 5, 0), 0), group="pad_id 0"),
            Case("tokens (1, 1), pad_id 0", (tokens(g, 1, 1, 0), 0), group="pad_id 0"),
            Case("tokens (4, 6), pad_id 3", (tokens(g, 4, 6, 3), 3), group="another pad_id and int32 tokens"),
            Case("tokens (2, 7) of dtype int32, pad_id 1", (tokens(g, 2, 7, 1).int(), 1),
                 group="another pad_id and int32 tokens"),
            Case("tokens (2, 5) on the meta device (no values), pad_id 0", (tokens(g, 2, 5, 0), 0),
                 group="tokens on another device", meta_inputs=True)]


def _pad_inverted(tokens, pad_id):
    return (tokens == pad_id).unsqueeze(1)


def _pad_no_query_axis(tokens, pad_id):
    return tokens != pad_id


def _pad_masks_queries(tokens, pad_id):
    return (tokens != pad_id).unsqueeze(-1)


def _pad_id_ignored(tokens, pad_id):
    return (tokens != 0).unsqueeze(1)


PADDING_MASK = Item(
    "padding_mask", ASSIGNMENT, "function", _padding_cases, Reference("masks", "padding_mask"),
    ("transformer_ref.masks.padding_mask", "transformer_ref.masks.decoder_self_attention_mask"), outputs=("mask",),
    mistakes=(
        Mistake("inverted", "your mask is True at the padding; True means 'may attend', i.e. tokens != pad_id.",
                _pad_inverted),
        Mistake("no_query_axis", "your mask has shape (B, T); return (B, 1, T) so that it broadcasts over the "
                "queries (unsqueeze(1)).", _pad_no_query_axis),
        Mistake("masks_queries", "your mask has shape (B, T, 1): it masks query rows instead of key columns; "
                "padding_mask is (B, 1, T).", _pad_masks_queries),
        Mistake("pad_id_ignored", "you compared with 0 instead of the pad_id argument.", _pad_id_ignored),
    ), explain=explain_mask,
    hints=("A key may be attended when it is not padding: compare the tokens with pad_id. The mask must broadcast over"
           " the queries, so it needs an axis of size 1 for them.",
           "The comparison gives (B, T); insert the query axis between the batch and the keys (unsqueeze at 1) to get "
           "(B, 1, T). Use the pad_id argument, and torch operations only (they keep the tokens' device)."))


def check_padding_mask(impl, seeds=(0,), cuda=False):
    """Check a submission of padding_mask(tokens (B, T), pad_id) -> bool mask (B, 1, T) against transformer_ref
    on random token batches (each seed, and CUDA copies when cuda=True and a GPU is present); raise CheckFailed
    with what was expected, what came back and the likely mistake."""
    assert_passes(PADDING_MASK, impl, seeds, cuda)


# ---------------------------------------------------------------- decoder_self_attention_mask

def _padding_and_causal(tokens, pad_id):
    T = tokens.size(1)
    return (tokens != pad_id).unsqueeze(1), torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()


def _dec_or(tokens, pad_id):
    pad, causal = _padding_and_causal(tokens, pad_id)
    return pad | causal


def _dec_padding_rows(tokens, pad_id):
    pad, causal = _padding_and_causal(tokens, pad_id)
    return pad.transpose(1, 2) & causal


def _dec_causal_only(tokens, pad_id):
    pad, causal = _padding_and_causal(tokens, pad_id)
    return causal.expand(tokens.size(0), -1, -1)


def _dec_padding_only(tokens, pad_id):
    pad, causal = _padding_and_causal(tokens, pad_id)
    return pad.expand(-1, tokens.size(1), -1)


DECODER_SELF_ATTENTION_MASK = Item(
    "decoder_self_attention_mask", ASSIGNMENT, "function", _padding_cases,
    Reference("masks", "decoder_self_attention_mask"),
    ("transformer_ref.masks.decoder_self_attention_mask", "transformer_ref.masks.combine_masks"), outputs=("mask",),
    mistakes=(
        Mistake("or", "you combined the padding and causal masks with OR; a key may be attended only if it is not "
                "padding AND not in the future: use &.", _dec_or),
        Mistake("padding_rows", "your padding part masks the padded *queries* (rows) instead of the padded *keys* "
                "(columns).", _dec_padding_rows),
        Mistake("causal_only", "your mask is only the causal part; AND it with the padding mask.", _dec_causal_only),
        Mistake("padding_only", "your mask is only the padding part; AND it with the causal mask.",
                _dec_padding_only),
    ),
    builds_on=(CAUSAL_MASK, PADDING_MASK), explain=explain_mask,
    hints=("A key is allowed only if it is not padding AND not in the future: combine the two masks you wrote with a "
           "logical and; broadcasting does the rest.",
           "padding_mask of the tokens is (B, 1, T) and causal_mask of T (made on the tokens' device) is (T, T); & "
           "broadcasts them to (B, T, T)."))


def check_decoder_self_attention_mask(impl, seeds=(0,), cuda=False):
    """Check a submission of decoder_self_attention_mask(tokens (B, T), pad_id) -> bool mask (B, T, T) against
    transformer_ref on random token batches (each seed, and CUDA copies when cuda=True and a GPU is present);
    raise CheckFailed with what was expected, what came back and the likely mistake."""
    assert_passes(DECODER_SELF_ATTENTION_MASK, impl, seeds, cuda)


ITEMS = (CAUSAL_MASK, PADDING_MASK, DECODER_SELF_ATTENTION_MASK)

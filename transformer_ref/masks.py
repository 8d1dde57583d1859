"""Attention masks.

Convention everywhere in this package: a mask is a **bool** tensor, ``True = may attend``,
broadcastable to ``(..., T_q, T_k)`` -- the same as ``torch.nn.functional.scaled_dot_product_attention``.
A query row with nothing to attend to yields zero weights and zero output, never NaN.

``torch.nn.MultiheadAttention`` uses the opposite convention for its bool ``attn_mask`` and
``key_padding_mask`` (``True = ignore``); convert with ``~mask`` (see :func:`from_key_padding_mask`).
"""

from __future__ import annotations

import torch

from transformer_ref._checks import (check_integer, check_mask, check_ndim, check_positive_int,
                                     check_same_device, check_tensor)


def causal_mask(T_q: int, T_k: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Causal ("look-ahead") mask: query i may attend to key j iff j <= i + (T_k - T_q).

    With T_k = T_q (the default) this is the lower triangle, diagonal included. With T_k > T_q the
    queries are the *last* T_q positions of the key sequence (e.g. decoding with a cache).
    Returns (T_q, T_k) bool, True = may attend.
    """
    check_positive_int(T_q, "T_q")
    T_k = T_q if T_k is None else check_positive_int(T_k, "T_k")
    ones = torch.ones(T_q, T_k, dtype=torch.bool, device=device)
    return torch.tril(ones, diagonal=T_k - T_q)  # (T_q, T_k)


def padding_mask(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Key padding mask from token ids: True where tokens != pad_id.

    tokens: (B, T) integer token ids.
    Returns (B, 1, T) bool, True = may attend. The singleton axis broadcasts over the queries,
    to (B, T_q, T); MultiHeadAttention inserts the head axis, giving (B, H, T_q, T).
    """
    check_integer(tokens, "tokens")
    check_ndim(tokens, "tokens", 2, "(B, T)")
    return (tokens != pad_id).unsqueeze(1)  # (B, 1, T)


def decoder_self_attention_mask(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mask for decoder self-attention: padding AND causal.

    tokens: (B, T) integer token ids. Returns (B, T, T) bool, True = may attend.
    """
    pad = padding_mask(tokens, pad_id)  # (B, 1, T)
    return pad & causal_mask(tokens.size(1), device=tokens.device)  # (B, T, T)


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Logical AND of bool masks with broadcasting; None entries are skipped.

    Returns None when every entry is None (no masking at all).
    """
    present = [(f"masks[{i}]", m) for i, m in enumerate(masks) if m is not None]
    if not present:
        return None
    for name, m in present:
        check_mask(m, name, m.shape)  # bool dtype; shapes are checked together below
    check_same_device(*present)
    shapes = [tuple(m.shape) for _, m in present]
    try:
        torch.broadcast_shapes(*shapes)
    except RuntimeError:
        raise ValueError(f"masks of shapes {shapes} do not broadcast together") from None
    combined = present[0][1]
    for _, m in present[1:]:
        combined = combined & m
    return combined


def from_key_padding_mask(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """Convert nn.MultiheadAttention's key_padding_mask (B, T), True = ignore, to ours.

    Returns (B, 1, T) bool, True = may attend (the same layout as :func:`padding_mask`).
    """
    check_tensor(key_padding_mask, "key_padding_mask")
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be a bool tensor (True = ignore, nn.MultiheadAttention's "
                        f"convention); got {key_padding_mask.dtype}")
    check_ndim(key_padding_mask, "key_padding_mask", 2, "(B, T)")
    return (~key_padding_mask).unsqueeze(1)  # (B, 1, T)


def to_additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Bool mask (True = may attend) -> additive float mask: 0 where allowed, -inf where not.

    Adding it to the attention scores before the softmax has the same effect as the bool mask
    (except for fully masked rows, which the additive form turns into NaN).
    """
    check_mask(mask, "mask", mask.shape)  # bool dtype
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill(~mask, float("-inf"))

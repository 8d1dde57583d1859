"""Multi-head attention (Vaswani et al. 2017, section 3.2.2).

MultiHead(Q, K, V) = Concat(head_1, ..., head_H) W_o,  head_i = Attention(Q W_q^i, K W_k^i, V W_v^i).
The H projections of size d_k = d_model / H are computed as one (d_model -> d_model) linear map each
for Q, K and V, then split into heads.

Mask convention: bool, True = may attend, broadcastable to (B, T_q, T_k) (a head axis is inserted)
or 4-D (B, H, T_q, T_k). For ``nn.MultiheadAttention``'s True = ignore masks, pass ``~mask``.
"""

from __future__ import annotations

import torch
from torch import nn

from transformer_ref._checks import (check_divisible, check_floating, check_mask, check_module_device,
                                     check_ndim, check_positive_int, check_size)
from transformer_ref.attention import _fused_attention, scaled_dot_product_attention


def _check_split_heads(x: torch.Tensor, num_heads: int) -> None:
    check_ndim(x, "x", 3, "(B, T, d_model)")
    check_positive_int(num_heads, "num_heads")
    check_divisible(x.size(-1), num_heads)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, d_model) -> (B, H, T, d_k) with d_k = d_model // H; head h holds features h*d_k:(h+1)*d_k."""
    _check_split_heads(x, num_heads)  # arguments checked here
    B, T, d_model = x.shape
    return x.view(B, T, num_heads, d_model // num_heads).transpose(1, 2)  # (B, H, T, d_k)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, d_k) -> (B, T, H*d_k): the inverse of :func:`split_heads` (concatenate the heads)."""
    check_ndim(x, "x", 4, "(B, H, T, d_k)")  # argument checked here
    B, H, T, d_k = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d_k)  # (B, T, d_model)


def attention_mask_for_heads(mask: torch.Tensor | None, name: str, B: int, H: int, T_q: int, T_k: int,
                             device: torch.device) -> torch.Tensor | None:
    """Check a mask (bool, True = may attend) and give it a head axis.

    Accepts masks broadcastable to (B, T_q, T_k), or 4-D ones broadcastable to (B, H, T_q, T_k);
    returns a mask broadcastable to (B, H, T_q, T_k) (or None). ``name`` is used in error messages.
    """
    if isinstance(mask, torch.Tensor) and mask.dim() == 4:
        check_mask(mask, name, (B, H, T_q, T_k), "(B, H, T_q, T_k)", device=device)
        return mask
    check_mask(mask, name, (B, T_q, T_k), "(B, T_q, T_k)", device=device)
    if mask is not None and mask.dim() == 3:
        return mask.unsqueeze(1)  # (B, 1, T_q, T_k): the same mask for every head
    return mask  # 0-, 1- or 2-D masks already broadcast over (B, H)


class MultiHeadAttention(nn.Module):
    """Multi-head attention for self-attention (query = key = value) and cross-attention.

    Members: W_q, W_k, W_v, W_o, each nn.Linear(d_model, d_model, bias=bias).
    dropout: on the attention weights, only in training mode.
    """

    def __init__(self, d_model: int, num_heads: int, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        check_positive_int(d_model, "d_model")
        check_positive_int(num_heads, "num_heads")
        check_divisible(d_model, num_heads)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.d_k = d_model // num_heads
        self.dropout = dropout
        self.W_q = nn.Linear(d_model, d_model, bias=bias)
        self.W_k = nn.Linear(d_model, d_model, bias=bias)
        self.W_v = nn.Linear(d_model, d_model, bias=bias)
        self.W_o = nn.Linear(d_model, d_model, bias=bias)

    def _check_inputs(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      mask: torch.Tensor | None) -> torch.Tensor | None:
        """Validate the inputs; return the mask ready to broadcast to (B, H, T_q, T_k)."""
        for name, x, hint in (("query", query, "(B, T_q, d_model)"), ("key", key, "(B, T_k, d_model)"),
                              ("value", value, "(B, T_k, d_model)")):
            check_floating(x, name)
            check_ndim(x, name, 3, hint)
            check_size(x, name, 2, self.d_model, "d_model")
            check_size(x, name, 0, query.size(0), "B = query.shape[0]")
            check_module_device(x, name, self)
        check_size(value, "value", 1, key.size(1), "T_k = key.shape[1]")
        return attention_mask_for_heads(mask, "mask", query.size(0), self.num_heads, query.size(1), key.size(1),
                                        query.device)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None = None,
                need_weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query: (B, T_q, d_model)   key, value: (B, T_k, d_model).

        mask: bool, True = may attend; broadcastable to (B, T_q, T_k) or 4-D (B, H, T_q, T_k).
        need_weights=True: explicit attention, returns per-head weights (B, H, T_q, T_k).
        need_weights=False: the fused kernel (F.scaled_dot_product_attention), weights None.
        Returns (output (B, T_q, d_model), weights or None).
        """
        mask = self._check_inputs(query, key, value, mask)  # arguments checked; mask now (B, H, T_q, T_k)-ready
        q = split_heads(self.W_q(query), self.num_heads)  # (B, H, T_q, d_k)
        k = split_heads(self.W_k(key), self.num_heads)  # (B, H, T_k, d_k)
        v = split_heads(self.W_v(value), self.num_heads)  # (B, H, T_k, d_k)
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            heads, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p)  # (B, H, T_q, d_k)
        else:
            heads, weights = _fused_attention(q, k, v, mask, dropout_p), None  # no (T_q, T_k) matrix
        return self.W_o(merge_heads(heads)), weights  # (B, T_q, d_model)

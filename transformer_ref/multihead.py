"""Multi-head attention (Vaswani et al. 2017, section 3.2.2).

MultiHead(Q, K, V) = Concat(head_1, ..., head_H) W_o,  head_i = Attention(Q W_q^i, K W_k^i, V W_v^i).
The H projections of size d_k = d_model / H are computed as one (d_model -> d_model) linear map each
for Q, K and V, then split into heads.

Grouped-query attention (Ainslie et al. 2023): ``num_kv_heads`` = H_kv < H key/value heads, each shared by
H / H_kv consecutive query heads; H_kv = 1 is multi-query attention (Shazeer 2019), H_kv = H (the default)
multi-head attention exactly. It shrinks W_k, W_v and, above all, the KV cache of decoding (kv_cache.py).

Mask convention: bool, True = may attend, broadcastable to (B, T_q, T_k) (a head axis is inserted)
or 4-D (B, H, T_q, T_k). For ``nn.MultiheadAttention``'s True = ignore masks, pass ``~mask``.
"""

from __future__ import annotations

import torch
from torch import nn

from transformer_ref._checks import (check_divisible, check_floating, check_mask, check_module_device,
                                     check_ndim, check_positive_int, check_size)
from transformer_ref.attention import _check_qkv, _fused_attention, scaled_dot_product_attention
from transformer_ref.kv_cache import KVCache


def _check_num_kv_heads(num_kv_heads: int, num_heads: int) -> int:
    check_positive_int(num_kv_heads, "num_kv_heads")
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads}): each key/value head "
                         f"serves num_heads / num_kv_heads query heads")
    return num_kv_heads


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


def _check_grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> None:
    """q (B, H, T_q, d_k), k (B, H_kv, T_k, d_k), v (B, H_kv, T_k, d_v) with H_kv dividing H; mask bool,
    broadcastable to (B, H, T_q, T_k)."""
    for name, x, hint in (("q", q, "(B, H, T_q, d_k)"), ("k", k, "(B, H_kv, T_k, d_k)"),
                          ("v", v, "(B, H_kv, T_k, d_v)")):
        check_ndim(x, name, 4, hint)
    check_size(v, "v", 1, k.size(1), "H_kv = k.shape[1]")
    if q.size(1) % k.size(1) != 0:
        raise ValueError(f"the number of query heads q.shape[1] = {q.size(1)} must be a multiple of the number of "
                         f"key/value heads k.shape[1] = {k.size(1)}")
    B, H, T_q, T_k = q.size(0), q.size(1), q.size(2), k.size(2)
    _check_qkv(q.unflatten(1, (k.size(1), -1)), k.unsqueeze(2), v.unsqueeze(2))  # dtypes, devices, d_k, T_k, B
    check_mask(mask, "mask", (B, H, T_q, T_k), "(B, H, T_q, T_k)", device=q.device)


def grouped_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                            dropout_p: float = 0.0, training: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention of H query heads over H_kv key/value heads (Ainslie et al. 2023).

    Query heads g G .. (g + 1) G - 1, G = H / H_kv, all use key/value head g: the same as repeating each
    key/value head G times (``k.repeat_interleave(G, dim=1)``), without the copies. H_kv = 1 is multi-query
    attention (Shazeer 2019); H_kv = H is :func:`scaled_dot_product_attention` itself.
    q: (B, H, T_q, d_k)   k: (B, H_kv, T_k, d_k)   v: (B, H_kv, T_k, d_v)
    mask: bool, broadcastable to (B, H, T_q, T_k); True = may attend.
    Returns (output (B, H, T_q, d_v), weights (B, H, T_q, T_k)).
    """
    _check_grouped(q, k, v, mask)  # arguments checked here
    H, H_kv = q.size(1), k.size(1)
    if H_kv == H:
        return scaled_dot_product_attention(q, k, v, mask, dropout_p, training)
    q = q.unflatten(1, (H_kv, H // H_kv))  # (B, H_kv, G, T_q, d_k): the G query heads of each group
    if mask is not None:
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (B or 1, H or 1, T_q or 1, T_k or 1)
        mask = mask.unflatten(1, (H_kv, H // H_kv)) if mask.size(1) == H else mask.unsqueeze(2)
    out, weights = scaled_dot_product_attention(q, k.unsqueeze(2), v.unsqueeze(2), mask, dropout_p, training)
    return out.flatten(1, 2), weights.flatten(1, 2)  # (B, H, T_q, d_v), (B, H, T_q, T_k)


class MultiHeadAttention(nn.Module):
    """Multi-head attention for self-attention (query = key = value) and cross-attention.

    Members: W_q, W_o, each nn.Linear(d_model, d_model, bias=bias); W_k, W_v, each
    nn.Linear(d_model, num_kv_heads * d_k, bias=bias) (d_model -> d_model unless grouped).
    num_kv_heads: key/value heads, a divisor of num_heads (None: num_heads, plain multi-head attention;
    1: multi-query attention); see :func:`grouped_query_attention`.
    dropout: on the attention weights, only in training mode.
    """

    def __init__(self, d_model: int, num_heads: int, bias: bool = True, dropout: float = 0.0,
                 num_kv_heads: int | None = None) -> None:
        super().__init__()
        check_positive_int(d_model, "d_model")
        check_positive_int(num_heads, "num_heads")
        check_divisible(d_model, num_heads)
        num_kv_heads = num_heads if num_kv_heads is None else _check_num_kv_heads(num_kv_heads, num_heads)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.d_k = d_model // num_heads
        self.dropout = dropout
        self.W_q = nn.Linear(d_model, d_model, bias=bias)
        self.W_k = nn.Linear(d_model, num_kv_heads * self.d_k, bias=bias)
        self.W_v = nn.Linear(d_model, num_kv_heads * self.d_k, bias=bias)
        self.W_o = nn.Linear(d_model, d_model, bias=bias)

    def _check_inputs(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      mask: torch.Tensor | None, cache: KVCache | None = None) -> torch.Tensor | None:
        """Validate the inputs; return the mask ready to broadcast to (B, H, T_q, T_k), where T_k counts the
        cached positions too."""
        for name, x, hint in (("query", query, "(B, T_q, d_model)"), ("key", key, "(B, T_k, d_model)"),
                              ("value", value, "(B, T_k, d_model)")):
            check_floating(x, name)
            check_ndim(x, name, 3, hint)
            check_size(x, name, 2, self.d_model, "d_model")
            check_size(x, name, 0, query.size(0), "B = query.shape[0]")
            check_module_device(x, name, self)
        check_size(value, "value", 1, key.size(1), "T_k = key.shape[1]")
        T_k = key.size(1) + (len(cache) if cache is not None and not cache.fixed else 0)
        return attention_mask_for_heads(mask, "mask", query.size(0), self.num_heads, query.size(1), T_k,
                                        query.device)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None = None, need_weights: bool = True,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query: (B, T_q, d_model)   key, value: (B, T_k, d_model).

        mask: bool, True = may attend; broadcastable to (B, T_q, T_k) or 4-D (B, H, T_q, T_k).
        need_weights=True: explicit attention, returns per-head weights (B, H, T_q, T_k).
        need_weights=False: the fused kernel (F.scaled_dot_product_attention), weights None.
        cache (incremental decoding, kv_cache.KVCache): key and value are the new positions only; their keys
        and values are appended to the t cached ones, and the mask covers (B, T_q, t + T_k). A fixed cache
        (cross-attention) projects key and value once and reuses them while key is the same tensor.
        Returns (output (B, T_q, d_model), weights or None).
        """
        mask = self._check_inputs(query, key, value, mask, cache)  # arguments checked; mask (B, H, T_q, T_k)-ready
        q = split_heads(self.W_q(query), self.num_heads)  # (B, H, T_q, d_k)
        if cache is not None and cache.reusable:
            k, v = cache.reuse(key)  # cross-attention while decoding: the memory's keys and values, projected once
        else:
            k = split_heads(self.W_k(key), self.num_kv_heads)  # (B, H_kv, T_k, d_k); H_kv = H unless grouped
            v = split_heads(self.W_v(value), self.num_kv_heads)  # (B, H_kv, T_k, d_k)
            if cache is not None:
                k, v = cache.update(k, v, key)  # every key and value so far: (B, H_kv, t + T_k, d_k)
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            heads, weights = grouped_query_attention(q, k, v, mask, dropout_p)  # (B, H, T_q, d_k)
        else:  # the fused kernel: no (T_q, T_k) matrix
            heads, weights = _fused_attention(q, k, v, mask, dropout_p, self.num_kv_heads != self.num_heads), None
        return self.W_o(merge_heads(heads)), weights  # (B, T_q, d_model)

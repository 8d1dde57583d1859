"""Layer normalisation, residual blocks, the feed-forward network, and the encoder/decoder layers.

Post-LN (Vaswani et al. 2017): x = LN(x + Dropout(Sublayer(x))).
Pre-LN  (Xiong et al. 2020):   x = x + Dropout(Sublayer(LN(x))); the stack then ends with a final LN.
``norm_first`` switches between them, as in ``nn.TransformerEncoderLayer``.

Mask convention: bool, True = may attend, broadcastable to (B, T_q, T_k) or 4-D (B, H, T_q, T_k).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from transformer_ref._checks import (check_choice, check_floating, check_min_ndim, check_module_device, check_ndim,
                                     check_positive_int, check_same_device, check_size)
from transformer_ref.kv_cache import DecoderLayerCache, KVCache
from transformer_ref.multihead import MultiHeadAttention, attention_mask_for_heads

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": F.gelu}


def _check_layer_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> None:
    """x: floating (..., d_model); gamma, beta: floating (d_model,), on x's device."""
    check_floating(x, "x")
    check_min_ndim(x, "x", 1, "(..., d_model)")
    d_model = x.size(-1)
    for name, p in (("gamma", gamma), ("beta", beta)):
        check_floating(p, name)
        check_ndim(p, name, 1, "(d_model,)")
        check_size(p, name, 0, d_model, "d_model = x.shape[-1]")
    check_same_device(("x", x), ("gamma", gamma), ("beta", beta))


def layer_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LN(x) = gamma * (x - mean) / sqrt(var + eps) + beta over the last axis (Ba et al. 2016).

    x: (..., d_model)   gamma, beta: (d_model,). The variance is the biased one (divide by d_model),
    eps sits inside the square root -- both as in nn.LayerNorm. Returns (..., d_model).
    """
    _check_layer_norm(x, gamma, beta)  # arguments checked here
    mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # (..., 1), biased
    return gamma * (x - mean) / torch.sqrt(var + eps) + beta


class LayerNorm(nn.Module):
    """Layer normalisation over the last axis with learned scale ``weight`` and shift ``bias`` (as nn.LayerNorm)."""

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        check_positive_int(d_model, "d_model")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_model): :func:`layer_norm`, computed by PyTorch's fused kernel
        (one kernel instead of about ten elementwise ones; equal up to float rounding, tested)."""
        _check_layer_norm(x, self.weight, self.bias)  # arguments checked here
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


class AddNorm(nn.Module):
    """Post-LN residual connection: forward(x, sublayer_out) = LN(x + Dropout(sublayer_out))."""

    def __init__(self, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, sublayer_out: torch.Tensor) -> torch.Tensor:
        """x, sublayer_out: (B, T, d_model) -> (B, T, d_model)."""
        return self.norm(x + self.dropout(sublayer_out))


class PreNormResidual(nn.Module):
    """Pre-LN residual connection: forward(x, sublayer) = x + Dropout(sublayer(LN(x)))."""

    def __init__(self, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """x: (B, T, d_model); sublayer maps (B, T, d_model) -> (B, T, d_model)."""
        return x + self.dropout(sublayer(self.norm(x)))


def _check_feed_forward_args(d_model: int, d_ff: int, activation: str) -> None:
    check_positive_int(d_model, "d_model")
    check_positive_int(d_ff, "d_ff")
    check_choice(activation, "activation", tuple(ACTIVATIONS))


class PositionwiseFeedForward(nn.Module):
    """FFN(x) = linear2(Dropout(act(linear1(x)))), applied at every position (Vaswani et al. 2017, eq. 2).

    linear1: d_model -> d_ff, linear2: d_ff -> d_model; activation "relu" (the paper) or "gelu" (BERT, ViT;
    the exact erf form). Dropout sits where nn.TransformerEncoderLayer puts it.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu") -> None:
        super().__init__()
        _check_feed_forward_args(d_model, d_ff, activation)  # arguments checked here
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_model)."""
        hidden = ACTIVATIONS[self.activation](self.linear1(x))  # (..., d_ff)
        return self.linear2(self.dropout(hidden))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


def _sublayer_input(x: torch.Tensor, norm: nn.Module, norm_first: bool) -> torch.Tensor:
    """What a sublayer reads: LN(x) in pre-LN, x itself in post-LN."""
    return norm(x) if norm_first else x


def _sublayer_output(x: torch.Tensor, sublayer_out: torch.Tensor, norm: nn.Module, dropout: nn.Module,
                     norm_first: bool) -> torch.Tensor:
    """The residual sum: x + Dropout(out) in pre-LN, LN(x + Dropout(out)) in post-LN."""
    x = x + dropout(sublayer_out)
    return x if norm_first else norm(x)


def _check_layer_input(x: torch.Tensor, name: str, layer: nn.Module, d_model: int) -> None:
    check_floating(x, name)
    check_ndim(x, name, 3, "(B, T, d_model)")
    check_size(x, name, 2, d_model, "d_model")
    check_module_device(x, name, layer)


def _check_cache(cache: object, name: str, kind: type) -> int:
    """cache: None or a `kind` record (kv_cache.KVCache or DecoderLayerCache); returns t, the positions it holds."""
    if cache is None:
        return 0
    if not isinstance(cache, kind):
        raise TypeError(f"{name} must be a {kind.__name__} or None; got {type(cache).__name__}")
    return len(cache if isinstance(cache, KVCache) else cache.self_attn)


def _check_encoder_layer(layer: EncoderLayer, x: torch.Tensor, mask: torch.Tensor | None,
                         cache: KVCache | None) -> None:
    """x: (B, T, d_model) on the layer's device; mask bool, broadcastable to (B, T, t + T) or (B, H, T, t + T)
    with t the positions in the cache (0 without one)."""
    _check_layer_input(x, "x", layer, layer.self_attn.d_model)
    past = _check_cache(cache, "cache", KVCache)
    B, T = x.shape[:2]
    attention_mask_for_heads(mask, "mask", B, layer.self_attn.num_heads, T, past + T, x.device)


def _check_decoder_layer(layer: DecoderLayer, x: torch.Tensor, memory: torch.Tensor,
                         self_mask: torch.Tensor | None, memory_mask: torch.Tensor | None,
                         cache: DecoderLayerCache | None) -> None:
    """x: (B, T, d_model), memory: (B, S, d_model); self_mask broadcastable to (B, T, t + T) (or 4-D with H;
    t: the positions in the cache), memory_mask to (B, T, S)."""
    d_model = layer.self_attn.d_model
    _check_layer_input(x, "x", layer, d_model)
    _check_layer_input(memory, "memory", layer, d_model)
    check_size(memory, "memory", 0, x.size(0), "B = x.shape[0]")
    past = _check_cache(cache, "cache", DecoderLayerCache)
    (B, T), S, H = x.shape[:2], memory.size(1), layer.self_attn.num_heads
    attention_mask_for_heads(self_mask, "self_mask", B, H, T, past + T, x.device)
    attention_mask_for_heads(memory_mask, "memory_mask", B, H, T, S, x.device)


class EncoderLayer(nn.Module):
    """One encoder layer: self-attention, then the feed-forward network, each in a residual block.

    Members (stable names, used by the BERT and ViT weight conversions): self_attn (MultiHeadAttention),
    feed_forward (PositionwiseFeedForward: linear1, linear2), norm1, norm2 (LayerNorm), dropout1, dropout2.
    dropout applies to each sublayer's output, inside the FFN and to the attention weights.
    num_kv_heads: key/value heads of the self-attention (None: num_heads; see multihead.grouped_query_attention).
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float = 0.0,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5,
                 num_kv_heads: int | None = None) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout, num_kv_heads=num_kv_heads)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff, dropout, activation)
        self.norm1 = LayerNorm(d_model, layer_norm_eps)
        self.norm2 = LayerNorm(d_model, layer_norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, need_weights: bool = False,
                cache: KVCache | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, d_model); mask: bool, True = may attend, broadcastable to (B, T, T) or (B, H, T, T).

        cache (decoding, a kv_cache.KVCache holding t positions): x holds the new positions only, their
        self-attention keys and values are appended, and mask covers (B, T, t + T).
        Returns x (B, T, d_model), or (x, self-attention weights (B, H, T, t + T)) when need_weights
        (the explicit attention path; otherwise the fused one).
        """
        _check_encoder_layer(self, x, mask, cache)  # arguments checked here
        h = _sublayer_input(x, self.norm1, self.norm_first)
        attn_out, weights = self.self_attn(h, h, h, mask, need_weights, cache)
        x = _sublayer_output(x, attn_out, self.norm1, self.dropout1, self.norm_first)
        h = _sublayer_input(x, self.norm2, self.norm_first)
        x = _sublayer_output(x, self.feed_forward(h), self.norm2, self.dropout2, self.norm_first)
        return (x, weights) if need_weights else x


class DecoderLayer(nn.Module):
    """One decoder layer: masked self-attention, cross-attention over the encoder output, feed-forward.

    Members: self_attn, cross_attn (MultiHeadAttention), feed_forward (linear1, linear2), norm1, norm2, norm3,
    dropout1, dropout2, dropout3. num_kv_heads: key/value heads of both attentions (None: num_heads).
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float = 0.0,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5,
                 num_kv_heads: int | None = None) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout, num_kv_heads=num_kv_heads)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout, num_kv_heads=num_kv_heads)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff, dropout, activation)
        self.norm1 = LayerNorm(d_model, layer_norm_eps)
        self.norm2 = LayerNorm(d_model, layer_norm_eps)
        self.norm3 = LayerNorm(d_model, layer_norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, self_mask: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, need_weights: bool = False,
                cache: DecoderLayerCache | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, T, d_model) target side; memory: (B, S, d_model) encoder output.

        self_mask: bool, broadcastable to (B, T, T) -- usually causal & target padding.
        memory_mask: bool, broadcastable to (B, T, S) -- usually source padding (B, 1, S).
        True = may attend. cache (decoding, kv_cache.DecoderLayerCache holding t positions): x holds the new
        positions only, self_mask covers (B, T, t + T); the memory's keys and values are projected once.
        Returns x (B, T, d_model), or (x, self weights (B, H, T, t + T), cross weights (B, H, T, S))
        when need_weights.
        """
        _check_decoder_layer(self, x, memory, self_mask, memory_mask, cache)  # arguments checked here
        self_cache, cross_cache = (None, None) if cache is None else cache
        h = _sublayer_input(x, self.norm1, self.norm_first)
        attn_out, self_weights = self.self_attn(h, h, h, self_mask, need_weights, self_cache)
        x = _sublayer_output(x, attn_out, self.norm1, self.dropout1, self.norm_first)
        h = _sublayer_input(x, self.norm2, self.norm_first)
        attn_out, cross_weights = self.cross_attn(h, memory, memory, memory_mask, need_weights, cross_cache)
        x = _sublayer_output(x, attn_out, self.norm2, self.dropout2, self.norm_first)
        h = _sublayer_input(x, self.norm3, self.norm_first)
        x = _sublayer_output(x, self.feed_forward(h), self.norm3, self.dropout3, self.norm_first)
        return (x, self_weights, cross_weights) if need_weights else x

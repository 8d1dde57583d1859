"""The key/value cache of incremental decoding, and what it costs in memory.

A decoder generating token t + 1 needs the keys and values of positions 0 .. t in every self-attention
layer. Re-running the prefix recomputes them all at every step (O(t d^2) projections and O(t^2 d) attention
per new token); keeping them costs memory instead, and a new token then needs only its own projections and
O(t d) attention: one query against t keys. Outputs are unchanged (tested against re-running the prefix).

Records (this module imports nothing of the package; the models fill the records):
- :class:`KVCache`: one attention layer's keys and values, (B, H_kv, t, d_k) each, extended at every step.
  ``fixed=True`` (cross-attention over the encoder's memory): filled at the first step, reused after.
- :class:`DecoderLayerCache`: an encoder-decoder's decoder layer has both.

Memory: 2 (keys and values) x layers x H_kv x d_head x T x batch x bytes per element. Multi-query
(Shazeer 2019: H_kv = 1) and grouped-query attention (Ainslie et al. 2023: 1 < H_kv < H) shrink it by H / H_kv.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch


@dataclass(eq=False)
class KVCache:
    """The keys and values one attention layer has computed so far: keys, values (B, H_kv, t, d_k) or None.

    fixed=False (self-attention): :meth:`update` appends the new positions' keys and values.
    fixed=True (cross-attention): the first update stores the memory's keys and values; the layer then
    reuses them (:attr:`reusable`) for the tensor ``source`` they were computed from, and only for it.
    """

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    fixed: bool = False
    source: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        """t: the number of positions held."""
        return 0 if self.keys is None else self.keys.size(-2)

    @property
    def reusable(self) -> bool:
        """A filled fixed cache: its keys and values stand for the source's, which need no projection."""
        return self.fixed and self.keys is not None

    def update(self, k: torch.Tensor, v: torch.Tensor, source: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (B, H_kv, T_new, d_k) of the new positions. Stores and returns every key and value so far,
        (B, H_kv, t + T_new, d_k) each. A fixed cache stores k, v as they are, and source (the tensor they
        were projected from) to check :meth:`reuse` against."""
        if self.fixed:
            self.keys, self.values, self.source = k, v, source
        elif self.keys is None:
            self.keys, self.values = k, v
        else:
            self.keys = torch.cat([self.keys, k], dim=-2)  # (B, H_kv, t + T_new, d_k)
            self.values = torch.cat([self.values, v], dim=-2)
        return self.keys, self.values

    def reuse(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored keys and values of a filled fixed cache, if source is the tensor they came from."""
        if source is not self.source:
            raise ValueError("this cross-attention cache holds the keys and values of another memory; start a "
                             "new cache for each new memory (encoder output)")
        return self.keys, self.values

    def nbytes(self) -> int:
        """Bytes held by keys and values."""
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values) if t is not None)


class DecoderLayerCache(NamedTuple):
    """What one decoder layer of an encoder-decoder keeps: self-attention (grows) and cross-attention (fixed)."""

    self_attn: KVCache
    cross_attn: KVCache


def new_decoder_layer_cache() -> DecoderLayerCache:
    return DecoderLayerCache(KVCache(), KVCache(fixed=True))


def kv_cache_bytes(num_layers: int, num_kv_heads: int, d_head: int, seq_len: int, batch_size: int = 1,
                   bytes_per_element: int = 2) -> int:
    """Memory of a self-attention KV cache: 2 * layers * H_kv * d_head * T * batch * bytes per element.

    The 2 counts keys and values; bytes_per_element is 2 for float16/bfloat16, 4 for float32.
    """
    for name, value in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads), ("d_head", d_head),
                        ("seq_len", seq_len), ("batch_size", batch_size), ("bytes_per_element", bytes_per_element)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    return 2 * num_layers * num_kv_heads * d_head * seq_len * batch_size * bytes_per_element


class AttentionShape(NamedTuple):
    """The numbers of a published model that fix its KV cache's size."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    d_head: int
    context: int  # the training context length, a natural T


# Published configurations: Llama 2 (Touvron et al. 2023, Table 1 and section 2.2: the 70B model uses GQA with
# 8 key/value heads) and Mistral 7B (Jiang et al. 2023, Table 1).
PUBLISHED_MODELS: dict[str, AttentionShape] = {
    "Llama 2 7B": AttentionShape(num_layers=32, num_heads=32, num_kv_heads=32, d_head=128, context=4096),
    "Llama 2 70B": AttentionShape(num_layers=80, num_heads=64, num_kv_heads=8, d_head=128, context=4096),
    "Mistral 7B": AttentionShape(num_layers=32, num_heads=32, num_kv_heads=8, d_head=128, context=8192),
}

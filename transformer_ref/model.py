"""Encoder and decoder stacks, the encoder-decoder Transformer (Vaswani et al. 2017), a decoder-only LM.

Mask convention: bool, True = may attend, broadcastable to (B, T_q, T_k) (or 4-D (B, H, T_q, T_k)).
Token tensors are (B, T) long; ``pad_id`` marks padding, which no query may attend to.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transformer_ref._checks import (check_integer, check_module_device, check_ndim, check_positive_int,
                                     check_size, check_token_id, check_values)
from transformer_ref.kv_cache import DecoderLayerCache, KVCache, new_decoder_layer_cache
from transformer_ref.layers import DecoderLayer, EncoderLayer, LayerNorm
from transformer_ref.masks import causal_mask, decoder_self_attention_mask, padding_mask
from transformer_ref.positional import SinusoidalPositionalEncoding


class Encoder(nn.Module):
    """A stack of ``num_layers`` EncoderLayers; with norm_first (pre-LN) a final LayerNorm ``norm``.

    Members: layers (nn.ModuleList of EncoderLayer), norm (LayerNorm or None).
    """

    def __init__(self, num_layers: int, d_model: int, num_heads: int, d_ff: int, dropout: float = 0.0,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5,
                 num_kv_heads: int | None = None) -> None:
        super().__init__()
        check_positive_int(num_layers, "num_layers")
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, num_heads, d_ff, dropout, activation, norm_first, layer_norm_eps, num_kv_heads)
            for _ in range(num_layers))
        self.norm = LayerNorm(d_model, layer_norm_eps) if norm_first else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, need_weights: bool = False,
                cache: list[KVCache] | None = None) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, T, d_model); mask: bool, True = may attend, broadcastable to (B, T, T) or (B, H, T, T).

        cache: one kv_cache.KVCache per layer (decoding with self-attention layers, as DecoderOnlyLM does):
        x holds the new positions and mask covers (B, T, t + T), t = the positions cached.
        Returns x (B, T, d_model), or (x, [self-attention weights (B, H, T, t + T) per layer]) when need_weights.
        """
        weights = []
        for layer, layer_cache in zip(self.layers, _per_layer(cache, len(self.layers))):
            if need_weights:
                x, layer_weights = layer(x, mask, need_weights=True, cache=layer_cache)
                weights.append(layer_weights)
            else:
                x = layer(x, mask, cache=layer_cache)
        if self.norm is not None:
            x = self.norm(x)
        return (x, weights) if need_weights else x


class Decoder(nn.Module):
    """A stack of ``num_layers`` DecoderLayers; with norm_first (pre-LN) a final LayerNorm ``norm``.

    Members: layers (nn.ModuleList of DecoderLayer), norm (LayerNorm or None).
    """

    def __init__(self, num_layers: int, d_model: int, num_heads: int, d_ff: int, dropout: float = 0.0,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5,
                 num_kv_heads: int | None = None) -> None:
        super().__init__()
        check_positive_int(num_layers, "num_layers")
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, num_heads, d_ff, dropout, activation, norm_first, layer_norm_eps, num_kv_heads)
            for _ in range(num_layers))
        self.norm = LayerNorm(d_model, layer_norm_eps) if norm_first else None

    def forward(self, x: torch.Tensor, memory: torch.Tensor, self_mask: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, need_weights: bool = False,
                cache: list[DecoderLayerCache] | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """x: (B, T, d_model); memory: (B, S, d_model) the encoder's output.

        self_mask: bool, broadcastable to (B, T, T); memory_mask: bool, broadcastable to (B, T, S);
        True = may attend. cache: one kv_cache.DecoderLayerCache per layer (decoding): x holds the new
        positions and self_mask covers (B, T, t + T), t = the positions cached.
        Returns x (B, T, d_model), or (x, [self weights (B, H, T, t + T) per layer],
        [cross weights (B, H, T, S) per layer]) when need_weights.
        """
        self_weights, cross_weights = [], []
        for layer, layer_cache in zip(self.layers, _per_layer(cache, len(self.layers))):
            if need_weights:
                x, w_self, w_cross = layer(x, memory, self_mask, memory_mask, need_weights=True, cache=layer_cache)
                self_weights.append(w_self)
                cross_weights.append(w_cross)
            else:
                x = layer(x, memory, self_mask, memory_mask, cache=layer_cache)
        if self.norm is not None:
            x = self.norm(x)
        return (x, self_weights, cross_weights) if need_weights else x


def _per_layer(cache: list | None, num_layers: int) -> list:
    """cache: None or a list of one cache record per layer; returns one entry per layer (None without a cache)."""
    if cache is None:
        return [None] * num_layers
    if not isinstance(cache, list) or len(cache) != num_layers:
        got = f"a list of {len(cache)}" if isinstance(cache, list) else type(cache).__name__
        raise ValueError(f"cache must be a list of one cache per layer ({num_layers}, as new_cache() makes); got {got}")
    return cache


def _cached_positions(tokens: torch.Tensor, cache: list | None, num_layers: int, name: str) -> int:
    """t, the positions the cache holds (0 without one); tokens (B, T) must hold them and at least one more."""
    check_integer(tokens, name)
    check_ndim(tokens, name, 2, "(B, T)")
    layers = _per_layer(cache, num_layers)
    if cache is None:
        return 0
    first = layers[0]
    past = len(first if isinstance(first, KVCache) else first.self_attn)
    if tokens.size(1) <= past:
        raise ValueError(f"{name} must hold every token so far, the {past} the cache holds and at least one new one; "
                         f"got shape {tuple(tokens.shape)}")
    return past


def _xavier_init(module: nn.Module) -> None:
    """Glorot-uniform for every matrix (embeddings included), as nn.Transformer and the Annotated Transformer."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class TokenEmbedding(nn.Module):
    """Token embedding scaled by sqrt(d_model) (Vaswani et al. 2017, section 3.4), then + sinusoidal PE.

    Members: embedding (nn.Embedding, vocab_size x d_model), positional_encoding (SinusoidalPositionalEncoding,
    which also applies the dropout). forward(tokens (B, T) long) -> (B, T, d_model).
    """

    def __init__(self, vocab_size: int, d_model: int, max_len: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.vocab_size = check_positive_int(vocab_size, "vocab_size")
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.positional_encoding = SinusoidalPositionalEncoding(d_model, max_len, dropout)

    def forward(self, tokens: torch.Tensor, name: str = "tokens", offset: int = 0) -> torch.Tensor:
        """tokens: (B, T) integer ids in [0, vocab_size) at positions offset .. offset + T - 1 (offset > 0:
        decoding with a cache); ``name`` is used in error messages."""
        _check_tokens(self, tokens, name)  # arguments checked here (on a GPU without a sync)
        d_model = self.embedding.embedding_dim
        return self.positional_encoding(self.embedding(tokens) * math.sqrt(d_model), offset)  # (B, T, d_model)


def _check_tokens(embedding: TokenEmbedding, tokens: torch.Tensor, name: str) -> None:
    """tokens: (B, T) integer ids in [0, vocab_size), on the embedding's device.

    The range check needs the values: on the CPU it raises at once and names the range found; on a GPU
    it is an asynchronous device assertion (no GPU-to-CPU sync every step).
    """
    check_integer(tokens, name)
    check_ndim(tokens, name, 2, "(B, T)")
    check_module_device(tokens, name, embedding)
    vocab_size = embedding.vocab_size
    if tokens.numel() == 0:
        return
    if tokens.device.type == "cpu" and not torch.compiler.is_compiling():
        low, high = tokens.min().item(), tokens.max().item()
        if not (0 <= low and high < vocab_size):
            raise ValueError(f"{name} must hold token ids in [0, vocab_size = {vocab_size}); got values in "
                             f"[{low}, {high}]")
    else:
        check_values(((tokens >= 0) & (tokens < vocab_size)).all(),
                     f"{name} must hold token ids in [0, vocab_size = {vocab_size})")


def _check_decode(tgt: torch.Tensor, memory: torch.Tensor, src: torch.Tensor) -> None:
    """src: (B, S) like tgt's batch; memory: (B, S, d_model) from encode(src)."""
    check_ndim(src, "src", 2, "(B, S)")
    check_size(src, "src", 0, tgt.size(0), "B = tgt.shape[0]")
    check_size(memory, "memory", 1, src.size(1), "S = src.shape[1]")


def _check_decoding_args(model: Transformer, bos_id: int, eos_id: int, max_len: int) -> None:
    vocab = model.tgt_embedding.vocab_size
    check_token_id(bos_id, "bos_id", vocab, "tgt_vocab_size")
    check_token_id(eos_id, "eos_id", vocab, "tgt_vocab_size")
    if check_positive_int(max_len, "max_len") > model.max_len:
        raise ValueError(f"max_len must be at most the model's max_len = {model.max_len}; got {max_len}")


class Transformer(nn.Module):
    """The encoder-decoder Transformer of Vaswani et al. 2017.

    Members: src_embedding, tgt_embedding (TokenEmbedding: embedding scaled by sqrt(d_model) + sinusoidal PE
    + dropout), encoder (Encoder), decoder (Decoder), output_proj (nn.Linear d_model -> tgt_vocab_size).
    tie_embeddings=True shares output_proj.weight with tgt_embedding.embedding.weight (Press & Wolf 2017).
    Padding (pad_id) in src and tgt is masked out as a key; the decoder's self-attention is causal.
    num_kv_heads: key/value heads of every attention (None: num_heads; see multihead.grouped_query_attention).
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, d_model: int = 512, num_heads: int = 8,
                 num_encoder_layers: int = 6, num_decoder_layers: int = 6, d_ff: int = 2048, dropout: float = 0.1,
                 max_len: int = 512, norm_first: bool = False, tie_embeddings: bool = False, pad_id: int = 0,
                 num_kv_heads: int | None = None) -> None:
        super().__init__()
        self.pad_id = check_token_id(pad_id, "pad_id", min(src_vocab_size, tgt_vocab_size),
                                      "min(src_vocab_size, tgt_vocab_size)")
        self.max_len = max_len
        self.src_embedding = TokenEmbedding(src_vocab_size, d_model, max_len, dropout)
        self.tgt_embedding = TokenEmbedding(tgt_vocab_size, d_model, max_len, dropout)
        self.encoder = Encoder(num_encoder_layers, d_model, num_heads, d_ff, dropout, norm_first=norm_first,
                               num_kv_heads=num_kv_heads)
        self.decoder = Decoder(num_decoder_layers, d_model, num_heads, d_ff, dropout, norm_first=norm_first,
                               num_kv_heads=num_kv_heads)
        self.output_proj = nn.Linear(d_model, tgt_vocab_size)
        _xavier_init(self)
        if tie_embeddings:
            self.output_proj.weight = self.tgt_embedding.embedding.weight

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        """src: (B, S) token ids -> memory (B, S, d_model)."""
        x = self.src_embedding(src, "src")  # (B, S, d_model)
        return self.encoder(x, padding_mask(src, self.pad_id))  # mask (B, 1, S)

    def new_cache(self) -> list[DecoderLayerCache]:
        """An empty key/value cache for :meth:`decode`: one DecoderLayerCache per decoder layer."""
        return [new_decoder_layer_cache() for _ in self.decoder.layers]

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src: torch.Tensor,
               tgt_mask: torch.Tensor | None = None, cache: list[DecoderLayerCache] | None = None) -> torch.Tensor:
        """tgt: (B, T) token ids; memory: (B, S, d_model) from :meth:`encode`; src: (B, S) for its padding.

        tgt_mask: bool, broadcastable to (B, T, T), True = may attend; default causal & target padding.
        cache (from :meth:`new_cache`, holding the first t positions): only positions t .. T - 1 are run, and
        their keys and values are added to it; tgt_mask then covers their rows, (B, T - t, T).
        Returns logits (B, T - t, tgt_vocab_size) (t = 0 without a cache): position t predicts tgt[:, t + 1].
        """
        past = _cached_positions(tgt, cache, len(self.decoder.layers), "tgt")  # 0 without a cache
        x = self.tgt_embedding(tgt[:, past:], "tgt", offset=past)  # (B, T - t, d_model); checks tgt
        _check_decode(tgt, memory, src)  # arguments checked here
        if tgt_mask is None:  # causal & target padding, the rows of the positions not cached
            tgt_mask = decoder_self_attention_mask(tgt, self.pad_id) if cache is None else (
                padding_mask(tgt, self.pad_id) & causal_mask(tgt.size(1) - past, tgt.size(1), device=tgt.device))
        x = self.decoder(x, memory, tgt_mask, padding_mask(src, self.pad_id), cache=cache)
        return self.output_proj(x)  # (B, T - t, tgt_vocab_size)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, tgt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src: (B, S), tgt: (B, T) token ids (teacher forcing: tgt is the shifted-right target).

        tgt_mask overrides the default causal & padding mask of the decoder's self-attention.
        Returns logits (B, T, tgt_vocab_size).
        """
        return self.decode(tgt, self.encode(src), src, tgt_mask)

    @torch.no_grad()
    def greedy_decode(self, src: torch.Tensor, bos_id: int, eos_id: int, max_len: int,
                      use_cache: bool = False) -> torch.Tensor:
        """Greedy decoding: start from bos_id, append the most likely next token until every sequence has
        produced eos_id or the output is max_len long (bos included).

        src: (B, S) token ids. Returns (B, T) long with T <= max_len; tokens[:, 0] == bos_id, and positions
        after a sequence's eos_id hold pad_id. Runs under torch.no_grad(); call model.eval() first.
        use_cache: keep each layer's keys and values (kv_cache.py) instead of re-running the prefix; the
        tokens are the same, a step costs O(t d) attention instead of O(t^2 d).
        """
        _check_decoding_args(self, bos_id, eos_id, max_len)  # arguments checked here
        memory = self.encode(src)  # (B, S, d_model)
        B = src.size(0)
        tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
        finished = torch.zeros(B, dtype=torch.bool, device=src.device)
        cache = self.new_cache() if use_cache else None
        for _ in range(max_len - 1):
            next_token = self.decode(tokens, memory, src, cache=cache)[:, -1].argmax(dim=-1)  # (B,)
            next_token = next_token.masked_fill(finished, self.pad_id)
            tokens = torch.cat([tokens, next_token.unsqueeze(1)], dim=1)  # (B, t + 1)
            finished |= next_token == eos_id
            if finished.all():
                break
        return tokens


class DecoderOnlyLM(nn.Module):
    """A GPT-style causal language model: token embedding + PE, self-attention layers, output projection.

    Members: embedding (TokenEmbedding), blocks (Encoder: self-attention layers only, used with a causal mask),
    output_proj (nn.Linear d_model -> vocab_size).
    num_kv_heads: key/value heads (None: num_heads; 1: multi-query; see multihead.grouped_query_attention).
    """

    def __init__(self, vocab_size: int, d_model: int, num_heads: int, num_layers: int, d_ff: int, max_len: int,
                 dropout: float = 0.0, norm_first: bool = False, num_kv_heads: int | None = None) -> None:
        super().__init__()
        self.embedding = TokenEmbedding(vocab_size, d_model, max_len, dropout)
        self.blocks = Encoder(num_layers, d_model, num_heads, d_ff, dropout, norm_first=norm_first,
                              num_kv_heads=num_kv_heads)
        self.output_proj = nn.Linear(d_model, vocab_size)
        _xavier_init(self)

    def new_cache(self) -> list[KVCache]:
        """An empty key/value cache for :meth:`forward`: one KVCache per layer."""
        return [KVCache() for _ in self.blocks.layers]

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None,
                cache: list[KVCache] | None = None) -> torch.Tensor:
        """tokens: (B, T) ids. mask: bool, broadcastable to (B, T, T), True = may attend; default causal_mask(T).

        A given mask replaces the causal one (combine it yourself, e.g. with masks.combine_masks, to add
        padding). cache (from :meth:`new_cache`, holding the first t positions): only positions t .. T - 1
        are run, and their keys and values are added to it; mask then covers their rows, (B, T - t, T).
        Returns logits (B, T - t, vocab_size) (t = 0 without a cache): position t predicts tokens[:, t + 1].
        """
        past = _cached_positions(tokens, cache, len(self.blocks.layers), "tokens")  # 0 without a cache
        x = self.embedding(tokens[:, past:], offset=past)  # (B, T - t, d_model)
        if mask is None:
            mask = causal_mask(tokens.size(1) - past, tokens.size(1), device=tokens.device)  # (T - t, T)
        return self.output_proj(self.blocks(x, mask, cache=cache))  # (B, T - t, vocab_size)

    @torch.no_grad()
    def greedy_generate(self, prefix: torch.Tensor, steps: int, use_cache: bool = False) -> torch.Tensor:
        """Append the most likely next token to prefix (B, T_0) `steps` times; returns (B, T_0 + steps).

        use_cache: keep each layer's keys and values instead of re-running the prefix (the same tokens).
        Runs under torch.no_grad(); call model.eval() first.
        """
        check_positive_int(steps, "steps")  # prefix is checked by forward
        tokens = prefix
        cache = self.new_cache() if use_cache else None
        for _ in range(steps):
            next_token = self(tokens, cache=cache)[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
            tokens = torch.cat([tokens, next_token], dim=1)  # (B, t + 1)
        return tokens

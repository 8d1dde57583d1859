"""Recurrent sequence models, the history before the Transformer.

- ``rnn_forward``: the Elman RNN written as an explicit loop over time,
  h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h).
- ``Seq2Seq``: an RNN/GRU/LSTM encoder-decoder (Sutskever et al. 2014; Cho et al. 2014), optionally
  with the additive attention of Bahdanau et al. 2015, so the decoder looks back at every encoder state
  instead of squeezing the source into one vector.

Token conventions: src and tgt are (B, T) long tensors, right-padded with pad_id. Attention masks are
bool with True = may attend (here: the source positions that are not padding).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from transformer_ref._checks import (check_choice, check_floating, check_integer, check_module_device,
                                     check_ndim, check_positive_int, check_same_device, check_size,
                                     check_token_id)
from transformer_ref.attention import AdditiveAttention

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}

# The recurrent state: h (1, B, H) for RNN/GRU, (h, c) for LSTM.
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _check_rnn_forward(x: torch.Tensor, h0: torch.Tensor | None, W_xh: torch.Tensor, W_hh: torch.Tensor,
                       b_h: torch.Tensor) -> torch.Tensor:
    """Check the shapes of :func:`rnn_forward`; return h0, zeros (B, H) when None."""
    check_floating(x, "x")
    check_ndim(x, "x", 3, "(B, T, d_in)")
    B, T, d_in = x.shape
    if T == 0:
        raise ValueError(f"x must hold at least one time step (T >= 1); got shape {tuple(x.shape)}")
    check_ndim(W_xh, "W_xh", 2, "(d_in, H)")
    check_size(W_xh, "W_xh", 0, d_in, "d_in = x.shape[2]")
    hidden = W_xh.size(1)
    check_ndim(W_hh, "W_hh", 2, "(H, H)")
    check_size(W_hh, "W_hh", 0, hidden, "H = W_xh.shape[1]")
    check_size(W_hh, "W_hh", 1, hidden, "H = W_xh.shape[1]")
    check_ndim(b_h, "b_h", 1, "(H,)")
    check_size(b_h, "b_h", 0, hidden, "H = W_xh.shape[1]")
    if h0 is None:
        h0 = x.new_zeros(B, hidden)
    check_ndim(h0, "h0", 2, "(B, H)")
    check_size(h0, "h0", 0, B, "B = x.shape[0]")
    check_size(h0, "h0", 1, hidden, "H = W_xh.shape[1]")
    check_same_device(("x", x), ("h0", h0), ("W_xh", W_xh), ("W_hh", W_hh), ("b_h", b_h))
    return h0


def rnn_forward(x: torch.Tensor, h0: torch.Tensor | None, W_xh: torch.Tensor, W_hh: torch.Tensor,
                b_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A tanh RNN, one time step at a time (Elman 1990):  h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h).

    x: (B, T, d_in)   h0: (B, H), or None for zeros   W_xh: (d_in, H)   W_hh: (H, H)   b_h: (H,)
    Returns (outputs (B, T, H) = h_1 .. h_T, h_T (B, H)).
    nn.RNN computes the same with W_xh = weight_ih_l0.T, W_hh = weight_hh_l0.T, b_h = bias_ih_l0 + bias_hh_l0.
    """
    h = _check_rnn_forward(x, h0, W_xh, W_hh, b_h)  # arguments checked here; h = h0, or zeros if None
    outputs = []
    for t in range(x.size(1)):
        h = torch.tanh(x[:, t] @ W_xh + h @ W_hh + b_h)  # (B, H)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h  # (B, T, H), (B, H)


class Seq2Seq(nn.Module):
    """Encoder-decoder with a recurrent cell ("rnn", "gru" or "lstm"), with or without Bahdanau attention.

    Encoder: embedding -> cell over the source (padding skipped by packing); its final state starts
    the decoder. Decoder, at step i with previous state s_{i-1} and previous token y_{i-1}:
      without attention:  s_i = cell(emb(y_{i-1}), s_{i-1});        logits_i = W_out s_i
      with attention:     c_i = sum_j alpha_ij h_j,  alpha_i = softmax_j(w_v . tanh(W_q s_{i-1} + W_k h_j))
                          s_i = cell([emb(y_{i-1}); c_i], s_{i-1});  logits_i = W_out [s_i; c_i]
    (for the LSTM, s is its hidden state h; the cell state c goes along). Padding positions of the
    source get attention weight 0.

    Members: src_embedding, tgt_embedding (nn.Embedding), encoder, decoder (nn.RNN/GRU/LSTM, batch_first),
    attention (AdditiveAttention or None), output_proj (nn.Linear).
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed_dim: int, hidden_dim: int,
                 cell: str = "gru", attention: bool = False, pad_id: int = 0) -> None:
        super().__init__()
        for name, value in (("src_vocab_size", src_vocab_size), ("tgt_vocab_size", tgt_vocab_size),
                            ("embed_dim", embed_dim), ("hidden_dim", hidden_dim)):
            check_positive_int(value, name)
        check_choice(cell, "cell", tuple(CELLS))
        self.pad_id = pad_id
        self.tgt_vocab_size = tgt_vocab_size
        self.src_embedding = nn.Embedding(src_vocab_size, embed_dim, padding_idx=pad_id)
        self.tgt_embedding = nn.Embedding(tgt_vocab_size, embed_dim, padding_idx=pad_id)
        self.encoder = CELLS[cell](embed_dim, hidden_dim, batch_first=True)
        context_dim = hidden_dim if attention else 0
        self.decoder = CELLS[cell](embed_dim + context_dim, hidden_dim, batch_first=True)
        self.attention = AdditiveAttention(hidden_dim, hidden_dim, hidden_dim) if attention else None
        self.output_proj = nn.Linear(hidden_dim + context_dim, tgt_vocab_size)

    def _check_tokens(self, tokens: torch.Tensor, name: str) -> None:
        check_integer(tokens, name)
        check_ndim(tokens, name, 2, "(B, T)")
        check_module_device(tokens, name, self)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, State, torch.Tensor]:
        """src: (B, S) right-padded with pad_id, at least one token per row.

        Returns (encoder states (B, S, H), zero at padding; final state at each row's last token,
        the decoder's initial state; src_mask (B, S) bool, True = a real token = may attend).
        """
        self._check_tokens(src, "src")
        src_mask = src != self.pad_id  # (B, S)
        lengths = src_mask.sum(dim=1)  # (B,)
        right_padded = torch.arange(src.size(1), device=src.device) < lengths.unsqueeze(1)  # (B, S)
        if not torch.equal(src_mask, right_padded) or not bool((lengths > 0).all()):
            raise ValueError(f"src must be right-padded with pad_id = {self.pad_id} (padding only at the end "
                             f"of each row) and hold at least one token per row; got lengths {lengths.tolist()}")
        packed = pack_padded_sequence(self.src_embedding(src), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        packed_states, state = self.encoder(packed)
        states, _ = pad_packed_sequence(packed_states, batch_first=True, total_length=src.size(1))  # (B, S, H)
        return states, state, src_mask

    def _decode(self, tgt_in: torch.Tensor, state: State, enc_states: torch.Tensor, src_mask: torch.Tensor
                ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """Run the decoder over tgt_in (B, T) from `state`.

        Returns (logits (B, T, V), final state, attention weights (B, T, S) or None).
        """
        embedded = self.tgt_embedding(tgt_in)  # (B, T, E)
        if self.attention is None:
            outputs, state = self.decoder(embedded, state)  # (B, T, H)
            return self.output_proj(outputs), state, None
        features, weights = [], []
        for t in range(tgt_in.size(1)):
            query = (state[0] if isinstance(state, tuple) else state)[-1]  # s_{t-1}: (B, H)
            context, alpha = self.attention(query, enc_states, enc_states, src_mask)  # (B, H), (B, S)
            step_in = torch.cat([embedded[:, t], context], dim=-1).unsqueeze(1)  # (B, 1, E + H)
            output, state = self.decoder(step_in, state)  # (B, 1, H)
            features.append(torch.cat([output.squeeze(1), context], dim=-1))  # (B, 2H)
            weights.append(alpha)
        logits = self.output_proj(torch.stack(features, dim=1))  # (B, T, V)
        return logits, state, torch.stack(weights, dim=1)  # (B, T, S)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing. src: (B, S) right-padded with pad_id; tgt_in: (B, T) = <bos> y_1 ... (the
        target shifted right). Returns logits (B, T, tgt_vocab_size); logits[:, i] predicts y_{i+1}.
        """
        self._check_tokens(tgt_in, "tgt_in")
        check_size(tgt_in, "tgt_in", 0, src.size(0), "B = src.shape[0]")
        enc_states, state, src_mask = self.encode(src)
        return self._decode(tgt_in, state, enc_states, src_mask)[0]

    @torch.no_grad()
    def greedy_decode(self, src: torch.Tensor, bos_id: int, eos_id: int, max_len: int
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Greedy decoding: from bos_id, append the most likely token until every row has produced eos_id
        or the output is max_len long (bos included), as Transformer.greedy_decode.

        src: (B, S). Returns (tokens (B, T) long with T <= max_len, tokens[:, 0] == bos_id and pad_id after
        a row's eos_id; attention weights (B, T - 1, S), row i being the weights used to produce
        tokens[:, i + 1], or None without attention). Call model.eval() first.
        """
        check_token_id(bos_id, "bos_id", self.tgt_vocab_size, "tgt_vocab_size")
        check_token_id(eos_id, "eos_id", self.tgt_vocab_size, "tgt_vocab_size")
        check_positive_int(max_len, "max_len")
        enc_states, state, src_mask = self.encode(src)
        B = src.size(0)
        tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
        finished = torch.zeros(B, dtype=torch.bool, device=src.device)
        weights = []
        for _ in range(max_len - 1):
            logits, state, alpha = self._decode(tokens[:, -1:], state, enc_states, src_mask)  # (B, 1, V)
            next_token = logits[:, -1].argmax(dim=-1).masked_fill(finished, self.pad_id)  # (B,)
            tokens = torch.cat([tokens, next_token.unsqueeze(1)], dim=1)  # (B, t + 1)
            if alpha is not None:
                weights.append(alpha)  # (B, 1, S)
            finished |= next_token == eos_id
            if bool(finished.all()):
                break
        if self.attention is None:
            return tokens, None
        if not weights:  # max_len == 1: only <bos>
            return tokens, enc_states.new_zeros(B, 0, src.size(1))
        return tokens, torch.cat(weights, dim=1)  # (B, T - 1, S)

"""transformer_ref.model: stacks vs nn.TransformerEncoder/Decoder, and the properties a Transformer must have."""

import math

import pytest
import torch
from test_layers import D_FF, D_MODEL, HEADS, _randn, _randomise_norms, torch_decoder_layer, torch_encoder_layer

from transformer_ref.masks import causal_mask, from_key_padding_mask
from transformer_ref.model import Decoder, DecoderOnlyLM, Encoder, Transformer

SRC_VOCAB, TGT_VOCAB, PAD, BOS, EOS = 11, 7, 0, 1, 2


def _tokens(B, T, vocab, device, seed=0, low=3):
    """Random non-special token ids (>= low) of shape (B, T)."""
    return torch.randint(low, vocab, (B, T), generator=torch.Generator().manual_seed(seed)).to(device)


def _small_transformer(device, norm_first=False, tie_embeddings=False, seed=0):
    torch.manual_seed(seed)
    model = Transformer(SRC_VOCAB, TGT_VOCAB, d_model=16, num_heads=2, num_encoder_layers=2, num_decoder_layers=2,
                        d_ff=24, dropout=0.1, max_len=32, norm_first=norm_first, tie_embeddings=tie_embeddings,
                        pad_id=PAD)
    return model.to(device).double().eval()


def _copy_final_norm(ours, ref):
    if ours.norm is not None:
        ref.norm = torch.nn.LayerNorm(D_MODEL).to(device=ours.norm.weight.device, dtype=torch.float64)
        ref.norm.load_state_dict(ours.norm.state_dict())


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_matches_torch(device, norm_first):
    torch.manual_seed(0)
    ours = Encoder(3, D_MODEL, HEADS, D_FF, activation="gelu", norm_first=norm_first).to(device).double().eval()
    _randomise_norms(ours)
    ref = torch.nn.TransformerEncoder(torch_encoder_layer(ours.layers[0], "gelu"), 3, enable_nested_tensor=False)
    ref.layers = torch.nn.ModuleList(torch_encoder_layer(layer, "gelu") for layer in ours.layers)
    _copy_final_norm(ours, ref)
    x = _randn(2, 5, D_MODEL, device=device)
    kpm = torch.tensor([[False] * 5, [False] * 3 + [True] * 2], device=device)  # True = ignore
    out, weights = ours(x, from_key_padding_mask(kpm), need_weights=True)
    torch.testing.assert_close(out, ref(x, src_key_padding_mask=kpm))
    assert len(weights) == 3 and all(w.shape == (2, HEADS, 5, 5) for w in weights)
    torch.testing.assert_close(ours(x, from_key_padding_mask(kpm)), out)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_matches_torch(device, norm_first):
    torch.manual_seed(0)
    ours = Decoder(2, D_MODEL, HEADS, D_FF, norm_first=norm_first).to(device).double().eval()
    _randomise_norms(ours)
    ref = torch.nn.TransformerDecoder(torch_decoder_layer(ours.layers[0], "relu"), 2)
    ref.layers = torch.nn.ModuleList(torch_decoder_layer(layer, "relu") for layer in ours.layers)
    _copy_final_norm(ours, ref)
    x, memory = _randn(2, 4, D_MODEL, device=device), _randn(2, 6, D_MODEL, device=device, seed=1)
    causal = causal_mask(4, device=device)
    mem_kpm = torch.tensor([[False] * 6, [False] * 2 + [True] * 4], device=device)
    out, self_w, cross_w = ours(x, memory, causal, from_key_padding_mask(mem_kpm), need_weights=True)
    torch.testing.assert_close(out, ref(x, memory, tgt_mask=~causal, memory_key_padding_mask=mem_kpm))
    assert [w.shape for w in self_w] == [(2, HEADS, 4, 4)] * 2 and [w.shape for w in cross_w] == [(2, HEADS, 4, 6)] * 2
    torch.testing.assert_close(ours(x, memory, causal, from_key_padding_mask(mem_kpm)), out)


def test_transformer_shapes_and_embedding_scale(device):
    model = _small_transformer(device)
    src, tgt = _tokens(3, 7, SRC_VOCAB, device), _tokens(3, 5, TGT_VOCAB, device, seed=1)
    assert model(src, tgt).shape == (3, 5, TGT_VOCAB)
    assert model.encode(src).shape == (3, 7, 16)
    # Embedding: E[token] * sqrt(d_model) + PE (dropout off in eval mode).
    emb = model.src_embedding
    expected = emb.embedding.weight[src] * math.sqrt(16) + emb.positional_encoding.pe[:7].to(device)
    torch.testing.assert_close(emb(src), expected)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_is_causal(device, norm_first):
    """Changing target token t changes no logits before position t."""
    model = _small_transformer(device, norm_first)
    src, tgt = _tokens(2, 6, SRC_VOCAB, device), _tokens(2, 8, TGT_VOCAB, device, seed=1)
    changed = tgt.clone()
    changed[:, 5] = (tgt[:, 5] + 1 - 3) % (TGT_VOCAB - 3) + 3
    before, after = model(src, tgt), model(src, changed)
    torch.testing.assert_close(after[:, :5], before[:, :5])
    assert not torch.allclose(after[:, 5:], before[:, 5:])
    # The leaky-mask demo: an all-True tgt_mask lets earlier positions see the change.
    leaky = torch.ones(8, 8, dtype=torch.bool, device=device)
    assert not torch.allclose(model(src, tgt, leaky)[:, :5], model(src, changed, leaky)[:, :5])


@pytest.mark.parametrize("norm_first", [False, True])
def test_source_padding_does_not_change_outputs(device, norm_first):
    model = _small_transformer(device, norm_first)
    src, tgt = _tokens(2, 5, SRC_VOCAB, device), _tokens(2, 6, TGT_VOCAB, device, seed=1)
    src[1, 3:] = PAD  # the second sentence is shorter
    padded = torch.cat([src, torch.full((2, 4), PAD, device=device)], dim=1)
    torch.testing.assert_close(model(padded, tgt), model(src, tgt))
    # ... and target padding does not change the logits at real target positions.
    tgt_padded = torch.cat([tgt, torch.full((2, 3), PAD, device=device)], dim=1)
    torch.testing.assert_close(model(src, tgt_padded)[:, :6], model(src, tgt))


def test_tie_embeddings_shares_the_weight(device):
    model = _small_transformer(device, tie_embeddings=True)
    assert model.output_proj.weight is model.tgt_embedding.embedding.weight
    assert model.output_proj.weight.data_ptr() == model.tgt_embedding.embedding.weight.data_ptr()
    n_tied = sum(p.numel() for p in model.parameters())
    n_untied = sum(p.numel() for p in _small_transformer(device).parameters())
    assert n_untied - n_tied == TGT_VOCAB * 16
    model(_tokens(2, 4, SRC_VOCAB, device), _tokens(2, 3, TGT_VOCAB, device)).sum().backward()
    assert model.tgt_embedding.embedding.weight.grad is not None


def _reference_greedy(model, src, max_len):
    """One sentence at a time, through forward(), for the full max_len; then pad after the first EOS."""
    rows = []
    for b in range(src.size(0)):
        tokens = torch.tensor([[BOS]], device=src.device)
        for _ in range(max_len - 1):
            next_token = model(src[b:b + 1], tokens)[0, -1].argmax()
            tokens = torch.cat([tokens, next_token.view(1, 1)], dim=1)
        row = tokens[0].tolist()
        if EOS in row:
            first = row.index(EOS)
            row = row[:first + 1] + [PAD] * (max_len - first - 1)
        rows.append(row)
    out = torch.tensor(rows, device=src.device)
    lengths = [row.index(EOS) + 1 if EOS in row else max_len for row in rows]
    return out[:, :max(lengths)]


def test_greedy_decode_matches_reference_and_pads_after_eos(device):
    model = _small_transformer(device)
    with torch.no_grad():  # never predict PAD or BOS; make EOS likely, so that some sentences stop early
        model.output_proj.bias[[PAD, BOS]] = -1e3
        model.output_proj.bias[EOS] += 1.0
    src = _tokens(6, 5, SRC_VOCAB, device)
    src[2, 2:] = PAD
    out = model.greedy_decode(src, BOS, EOS, max_len=9)
    assert out.dtype == torch.long and (out[:, 0] == BOS).all() and out.shape == (6, 9)
    torch.testing.assert_close(out, _reference_greedy(model, src, 9))
    stopped = 0
    for row in out.tolist():
        end = row.index(EOS) + 1 if EOS in row else len(row)
        assert PAD not in row[:end] and set(row[end:]) <= {PAD}, row
        stopped += end < len(row)
    assert 0 < stopped < len(out), "the test needs sentences that stop early and sentences that do not"


def test_greedy_decode_stops_when_all_sentences_end(device):
    model = _small_transformer(device)
    with torch.no_grad():
        model.output_proj.bias[EOS] = 1e3  # always predict EOS
    out = model.greedy_decode(_tokens(3, 4, SRC_VOCAB, device), BOS, EOS, max_len=10)
    torch.testing.assert_close(out, torch.tensor([[BOS, EOS]] * 3, device=device))


def test_transformer_learns_to_copy(device):
    """Adam steps on a fixed batch of a copy task lower the loss clearly."""
    torch.manual_seed(0)
    model = Transformer(SRC_VOCAB, SRC_VOCAB, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                        d_ff=32, dropout=0.0, max_len=8).to(device)
    src = _tokens(8, 5, SRC_VOCAB, device)
    tgt_in = torch.cat([torch.full((8, 1), BOS, device=device), src], 1)
    tgt_out = torch.cat([src, torch.full((8, 1), EOS, device=device)], 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt_out.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_only_lm_is_causal(device, norm_first):
    torch.manual_seed(0)
    lm = DecoderOnlyLM(SRC_VOCAB, 16, 2, 2, 24, max_len=20, norm_first=norm_first).to(device).double().eval()
    tokens = _tokens(2, 9, SRC_VOCAB, device)
    changed = tokens.clone()
    changed[:, 6] = (tokens[:, 6] - 2) % (SRC_VOCAB - 3) + 3
    logits = lm(tokens)
    assert logits.shape == (2, 9, SRC_VOCAB)
    torch.testing.assert_close(lm(changed)[:, :6], logits[:, :6])
    assert not torch.allclose(lm(changed)[:, 6:], logits[:, 6:])
    everything = torch.ones(9, 9, dtype=torch.bool, device=device)  # a leaky mask: the future leaks in
    assert not torch.allclose(lm(changed, everything)[:, :6], lm(tokens, everything)[:, :6])


def test_bad_input_messages(device):
    model = _small_transformer(device)
    src, tgt = _tokens(2, 5, SRC_VOCAB, device), _tokens(2, 4, TGT_VOCAB, device)
    with pytest.raises(TypeError, match=r"src must be an integer tensor of token ids \(torch.long\); got torch.float"):
        model(src.double(), tgt)
    with pytest.raises(TypeError, match=r"tgt must be an integer tensor of token ids \(torch.long\); got torch.bool"):
        model(src, tgt > 3)
    with pytest.raises(ValueError, match=r"src must hold token ids in \[0, vocab_size = 11\); got values in \[3, 11\]"):
        model(torch.cat([src, torch.full((2, 1), SRC_VOCAB, device=device)], 1), tgt)
    with pytest.raises(ValueError, match=r"tgt must have shape \(B, T\) \(2-D\); got shape \(4,\)"):
        model(src, tgt[0])
    with pytest.raises(ValueError, match=r"src.shape\[0\] must equal B = tgt.shape\[0\] = 1"):
        model(src, tgt[:1])
    with pytest.raises(ValueError, match=r"sequence length T = 40 but the positional table has max_len = 32"):
        model(src, _tokens(2, 40, TGT_VOCAB, device))
    with pytest.raises(ValueError, match=r"src is on meta but the parameters of TokenEmbedding are on"):
        model(src.to("meta"), tgt)
    with pytest.raises(TypeError, match=r"mask must be a bool tensor \(True = may attend\); got torch.int64"):
        model(src, tgt, torch.ones(4, 4, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match=r"mask of shape \(5, 5\) does not broadcast to \(B, T_q, T_k\)"):
        model(src, tgt, torch.ones(5, 5, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match=r"eos_id must be an int in \[0, tgt_vocab_size = 7\); got 7"):
        model.greedy_decode(src, BOS, TGT_VOCAB, 5)
    with pytest.raises(ValueError, match=r"max_len must be at most the model's max_len = 32; got 33"):
        model.greedy_decode(src, BOS, EOS, 33)
    with pytest.raises(ValueError, match=r"pad_id must be an int in \[0, min\(src_vocab_size, tgt_vocab_size\) = 7\)"):
        Transformer(11, 7, d_model=8, num_heads=2, pad_id=9)
    with pytest.raises(ValueError, match=r"d_model \(10\) must be divisible by num_heads \(4\)"):
        DecoderOnlyLM(5, 10, 4, 1, 8, 16)

"""rnn.py: the explicit RNN loop against nn.RNN, and the Seq2Seq models' shapes, masks and training."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from transformer_ref.rnn import Seq2Seq, rnn_forward

PAD, BOS, EOS = 0, 1, 2


# ---------------------------------------------------------------- rnn_forward

@pytest.mark.parametrize("B, T, d_in, H", [(1, 1, 3, 4), (3, 7, 5, 6), (2, 4, 8, 1)])
def test_rnn_forward_matches_nn_rnn(B, T, d_in, H, device):
    torch.manual_seed(0)
    # float64: on CUDA, cuDNN's float32 RNN may use TF32 and would differ by ~1e-3
    ref = torch.nn.RNN(d_in, H, batch_first=True).to(device, torch.float64)
    x = torch.randn(B, T, d_in, device=device, dtype=torch.float64)
    h0 = torch.randn(B, H, device=device, dtype=torch.float64)
    expected_out, expected_h = ref(x, h0.unsqueeze(0))
    # nn.RNN: h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
    out, h_T = rnn_forward(x, h0, ref.weight_ih_l0.T, ref.weight_hh_l0.T, ref.bias_ih_l0 + ref.bias_hh_l0)
    assert_close(out, expected_out)
    assert_close(h_T, expected_h.squeeze(0))
    assert_close(rnn_forward(x, None, ref.weight_ih_l0.T, ref.weight_hh_l0.T, ref.bias_ih_l0 + ref.bias_hh_l0)[0],
                 ref(x)[0])


def test_rnn_forward_first_step_by_hand():
    x = torch.tensor([[[1.0, 2.0]]])  # (1, 1, 2)
    h0 = torch.tensor([[0.5]])
    W_xh, W_hh, b_h = torch.tensor([[0.1], [0.2]]), torch.tensor([[-1.0]]), torch.tensor([0.3])
    out, h_T = rnn_forward(x, h0, W_xh, W_hh, b_h)
    expected = torch.tanh(torch.tensor(1.0 * 0.1 + 2.0 * 0.2 - 0.5 + 0.3))
    assert_close(h_T, expected.reshape(1, 1))
    assert_close(out, expected.reshape(1, 1, 1))


def test_rnn_forward_gradcheck():
    g = torch.Generator().manual_seed(1)
    shapes = [(2, 3, 3), (2, 4), (3, 4), (4, 4), (4,)]
    inputs = tuple(torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes)
    assert torch.autograd.gradcheck(rnn_forward, inputs)


def test_rnn_forward_rejects_bad_input():
    x, h0 = torch.randn(2, 3, 4), torch.randn(2, 5)
    W_xh, W_hh, b_h = torch.randn(4, 5), torch.randn(5, 5), torch.randn(5)
    with pytest.raises(ValueError, match=r"W_xh.shape\[0\] must equal d_in = x.shape\[2\] = 4; got shape \(3, 5\)"):
        rnn_forward(x, h0, torch.randn(3, 5), W_hh, b_h)
    with pytest.raises(ValueError, match=r"h0.shape\[1\] must equal H = W_xh.shape\[1\] = 5; got shape \(2, 6\)"):
        rnn_forward(x, torch.randn(2, 6), W_xh, W_hh, b_h)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, d_in\)"):
        rnn_forward(x[0], h0, W_xh, W_hh, b_h)
    with pytest.raises(TypeError, match="x must be a floating-point tensor; got torch.int64"):
        rnn_forward(x.long(), h0, W_xh, W_hh, b_h)


# ---------------------------------------------------------------- Seq2Seq

def random_batch(B, S, T, vocab, generator, src_lengths=None):
    """src right-padded to S (row b has src_lengths[b] tokens), tgt_in = <bos> + T - 1 tokens."""
    src = torch.randint(3, vocab, (B, S), generator=generator)
    if src_lengths is not None:
        src[torch.arange(S) >= torch.tensor(src_lengths).unsqueeze(1)] = PAD
    tgt_in = torch.randint(3, vocab, (B, T), generator=generator)
    tgt_in[:, 0] = BOS
    return src, tgt_in


@pytest.mark.parametrize("attention", [False, True], ids=["plain", "attention"])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_seq2seq_shapes(cell, attention, device):
    torch.manual_seed(2)
    g = torch.Generator().manual_seed(2)
    model = Seq2Seq(11, 13, embed_dim=8, hidden_dim=10, cell=cell, attention=attention).to(device).eval()
    src, tgt_in = (t.to(device) for t in random_batch(3, 6, 5, 11, g, src_lengths=[6, 2, 4]))
    logits = model(src, tgt_in)
    assert logits.shape == (3, 5, 13) and logits.device.type == device.type
    tokens, weights = model.greedy_decode(src, BOS, EOS, max_len=7)
    assert tokens.dtype == torch.long and tokens.shape[0] == 3 and 2 <= tokens.shape[1] <= 7
    assert (tokens[:, 0] == BOS).all()
    if attention:
        assert weights.shape == (3, tokens.shape[1] - 1, 6)
    else:
        assert weights is None


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_greedy_decode_agrees_with_teacher_forcing(cell, device):
    """Feeding the greedy output back with teacher forcing reproduces its argmax, and its attention."""
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(3)
    model = Seq2Seq(9, 9, embed_dim=6, hidden_dim=8, cell=cell, attention=True, pad_id=PAD).to(device).eval()
    src, _ = (t.to(device) for t in random_batch(4, 5, 2, 9, g, src_lengths=[5, 1, 3, 5]))
    # eos_id = 8, an ordinary symbol: rows may stop early; compare up to each row's first eos
    tokens, weights = model.greedy_decode(src, BOS, eos_id=8, max_len=6)
    enc_states, state, src_mask = model.encode(src)
    logits, _, teacher_weights = model._decode(tokens[:, :-1], state, enc_states, src_mask)
    expected = logits.argmax(-1)
    produced = tokens[:, 1:]
    live = torch.ones_like(produced, dtype=torch.bool)  # positions up to and including each row's first eos
    live[:, 1:] = (produced[:, :-1] != 8).cumprod(dim=1).bool()
    assert torch.equal(produced[live], expected[live])
    assert_close(weights[live], teacher_weights[live])


def test_attention_weights_sum_to_one_over_real_tokens(device):
    torch.manual_seed(4)
    g = torch.Generator().manual_seed(4)
    model = Seq2Seq(10, 10, embed_dim=8, hidden_dim=12, cell="gru", attention=True).to(device)
    src, tgt_in = (t.to(device) for t in random_batch(3, 7, 4, 10, g, src_lengths=[7, 3, 1]))
    enc_states, state, src_mask = model.encode(src)
    _, _, weights = model._decode(tgt_in, state, enc_states, src_mask)  # (B, T, S)
    assert_close(weights.sum(-1), torch.ones(3, 4, device=device))
    assert (weights.masked_select(~src_mask.unsqueeze(1)) == 0).all()
    assert (weights[2, :, 0] == 1).all()  # a one-token source: all the attention on it


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_extra_padding_changes_nothing(cell, device):
    """The same sources with more padding columns give the same logits and the same attention."""
    torch.manual_seed(5)
    g = torch.Generator().manual_seed(5)
    model = Seq2Seq(10, 10, embed_dim=8, hidden_dim=12, cell=cell, attention=True).to(device)
    src, tgt_in = (t.to(device) for t in random_batch(3, 5, 4, 10, g, src_lengths=[5, 2, 4]))
    padded = torch.cat([src, torch.full((3, 3), PAD, device=device)], dim=1)  # (B, S + 3)
    assert_close(model(padded, tgt_in), model(src, tgt_in))
    enc_states, state, src_mask = model.encode(src)
    enc_padded, state_padded, mask_padded = model.encode(padded)
    weights = model._decode(tgt_in, state, enc_states, src_mask)[2]
    weights_padded = model._decode(tgt_in, state_padded, enc_padded, mask_padded)[2]
    assert_close(weights_padded[..., :5], weights)
    assert (weights_padded[..., 5:] == 0).all()


def test_seq2seq_gradients_reach_every_parameter():
    torch.manual_seed(6)
    g = torch.Generator().manual_seed(6)
    model = Seq2Seq(10, 10, embed_dim=4, hidden_dim=6, cell="lstm", attention=True)
    src, tgt_in = random_batch(2, 4, 3, 10, g, src_lengths=[4, 2])
    model(src, tgt_in).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_seq2seq_rejects_bad_input():
    model = Seq2Seq(10, 10, embed_dim=4, hidden_dim=6, attention=True)
    src = torch.tensor([[3, 4, 0], [5, 0, 0]])
    tgt_in = torch.tensor([[BOS, 3], [BOS, 4]])
    with pytest.raises(ValueError, match="cell must be one of 'rnn', 'gru', 'lstm'; got 'transformer'"):
        Seq2Seq(10, 10, 4, 6, cell="transformer")
    with pytest.raises(ValueError, match=r"src must be right-padded with pad_id = 0 .*got lengths \[2, 2\]"):
        model(torch.tensor([[3, 4, 0], [0, 5, 6]]), tgt_in)
    with pytest.raises(ValueError, match=r"at least one token per row; got lengths \[2, 0\]"):
        model(torch.tensor([[3, 4, 0], [0, 0, 0]]), tgt_in)
    with pytest.raises(TypeError, match="src must be an integer tensor of token ids"):
        model(src.float(), tgt_in)
    with pytest.raises(ValueError, match=r"tgt_in.shape\[0\] must equal B = src.shape\[0\] = 2"):
        model(src, tgt_in[:1])
    with pytest.raises(ValueError, match=r"eos_id must be an int in \[0, tgt_vocab_size = 10\); got 10"):
        model.greedy_decode(src, BOS, 10, max_len=5)


def test_seq2seq_learns_to_reverse():
    """About a hundred steps on a tiny reversal task lower the loss clearly (and decode mostly right)."""
    torch.manual_seed(7)
    g = torch.Generator().manual_seed(7)
    num_symbols, length, B = 6, 5, 32
    vocab = 3 + num_symbols

    def batch():
        src = torch.randint(3, vocab, (B, length), generator=g)
        tgt = torch.cat([torch.full((B, 1), BOS), src.flip(1), torch.full((B, 1), EOS)], dim=1)
        return src, tgt[:, :-1], tgt[:, 1:]

    model = Seq2Seq(vocab, vocab, embed_dim=16, hidden_dim=32, cell="gru", attention=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(120):
        src, tgt_in, labels = batch()
        loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), labels.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    initial, final = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert final < 0.25 * initial, f"loss went from {initial:.3f} to only {final:.3f}"
    src, _, labels = batch()
    tokens, _ = model.eval().greedy_decode(src, BOS, EOS, max_len=length + 2)
    token_accuracy = (tokens[:, 1:] == labels).float().mean().item()
    assert token_accuracy > 0.8, f"greedy decoding got only {token_accuracy:.0%} of the reversed tokens right"

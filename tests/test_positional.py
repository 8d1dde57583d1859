"""positional.py against the papers' formulas computed independently (Python loops, float64)."""

import math

import pytest
import torch
from torch.testing import assert_close

from transformer_ref.positional import (LearnedPositionalEmbedding, RelativeMultiHeadAttention,
                                        SinusoidalPositionalEncoding, apply_rotary, relative_attention,
                                        relative_logits_naive, relative_logits_skewed, relative_position_index,
                                        sinusoidal_positional_encoding, skew)


# ---------------------------------------------------------------- sinusoidal (Vaswani et al. 2017, 3.5)

def paper_sinusoid(max_len: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model))."""
    table = [[0.0] * d_model for _ in range(max_len)]
    for pos in range(max_len):
        for dim in range(d_model):
            two_i = dim - dim % 2
            angle = pos / 10000 ** (two_i / d_model)
            table[pos][dim] = math.sin(angle) if dim % 2 == 0 else math.cos(angle)
    return torch.tensor(table, dtype=torch.float64)


@pytest.mark.parametrize("max_len, d_model", [(1, 2), (50, 16), (37, 7), (200, 64)])
def test_sinusoid_matches_paper_formula(max_len, d_model, device):
    expected = paper_sinusoid(max_len, d_model).to(device)
    assert_close(sinusoidal_positional_encoding(max_len, d_model, device=device, dtype=torch.float64),
                 expected, rtol=0, atol=1e-12)
    pe32 = sinusoidal_positional_encoding(max_len, d_model, device=device)
    assert pe32.dtype == torch.float32 and pe32.device.type == device.type
    assert_close(pe32, expected.float())


def test_sinusoid_known_values():
    pe = sinusoidal_positional_encoding(2, 4, dtype=torch.float64)
    # pos 0: sin 0, cos 0 repeated; pos 1: sin(1), cos(1), sin(1/100), cos(1/100).
    expected = torch.tensor([[0.0, 1.0, 0.0, 1.0],
                             [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]], dtype=torch.float64)
    assert_close(pe, expected, rtol=0, atol=1e-15)


def test_sinusoidal_module_adds_table(device):
    torch.manual_seed(0)
    module = SinusoidalPositionalEncoding(d_model=12, max_len=30).to(device)
    x = torch.randn(3, 17, 12, device=device)
    assert_close(module(x), x + paper_sinusoid(17, 12).float().to(device))
    assert "pe" not in module.state_dict(), "the table must be a non-persistent buffer"
    assert module.pe.device.type == device.type


def test_sinusoidal_module_dropout_only_in_training():
    module = SinusoidalPositionalEncoding(d_model=8, max_len=10, dropout=0.5)
    x = torch.randn(2, 5, 8)
    module.eval()
    assert_close(module(x), x + module.pe[:5])
    module.train()
    torch.manual_seed(0)
    assert (module(x) == 0).any()


def test_sinusoidal_module_rejects_bad_input():
    module = SinusoidalPositionalEncoding(d_model=8, max_len=10)
    with pytest.raises(ValueError, match=r"max_len = 10"):
        module(torch.randn(1, 11, 8))
    with pytest.raises(ValueError, match=r"d_model = 8"):
        module(torch.randn(1, 5, 6))
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, d_model\)"):
        module(torch.randn(5, 8))
    with pytest.raises(ValueError, match="d_model must be a positive int; got 0"):
        sinusoidal_positional_encoding(10, 0)


def test_learned_embedding(device):
    torch.manual_seed(0)
    module = LearnedPositionalEmbedding(max_len=20, d_model=6).to(device)
    x = torch.randn(2, 9, 6, device=device, requires_grad=True)
    out = module(x)
    assert_close(out, x + module.embedding.weight[:9])
    out.sum().backward()
    grad = module.embedding.weight.grad
    assert_close(grad[:9], torch.full_like(grad[:9], 2.0))  # summed over the batch of 2
    assert (grad[9:] == 0).all()
    with pytest.raises(ValueError, match="max_len = 20"):
        module(torch.randn(1, 21, 6, device=device))


# ---------------------------------------------------------------- Shaw et al. 2018

@pytest.mark.parametrize("q_len, k_len, k", [(5, 5, 2), (3, 7, 1), (6, 2, 0), (4, 4, 10)])
def test_relative_position_index(q_len, k_len, k, device):
    expected = torch.tensor([[max(-k, min(k, j - i)) + k for j in range(k_len)] for i in range(q_len)])
    got = relative_position_index(q_len, k_len, k, device=device)
    assert got.dtype == torch.long
    assert torch.equal(got.cpu(), expected)


def loop_relative_attention(q, k, v, rel_k, rel_v, mask=None):
    """Shaw et al. 2018 eq. (3)-(4) one batch entry and one query at a time."""
    lead, (t_q, d_k), t_k = q.shape[:-2], q.shape[-2:], k.size(-2)
    q, k, v = q.reshape(-1, t_q, d_k), k.reshape(-1, t_k, d_k), v.reshape(-1, t_k, v.size(-1))
    mask = None if mask is None else mask.expand(*lead, t_q, t_k).reshape(-1, t_q, t_k)
    out = torch.zeros(q.size(0), t_q, v.size(-1), dtype=q.dtype)
    weights = torch.zeros(q.size(0), t_q, t_k, dtype=q.dtype)
    for b in range(q.size(0)):
        for i in range(t_q):
            allowed = [j for j in range(t_k) if mask is None or mask[b, i, j]]
            if not allowed:
                continue
            e = torch.stack([q[b, i] @ (k[b, j] + rel_k[i, j]) / math.sqrt(d_k) for j in allowed])
            alpha = torch.softmax(e, dim=0)
            for a, j in zip(alpha, allowed):
                weights[b, i, j] = a
                out[b, i] += a * (v[b, j] + rel_v[i, j])
    return out.reshape(*lead, t_q, -1), weights.reshape(*lead, t_q, t_k)


@pytest.mark.parametrize("lead, t_q, t_k", [((1,), 1, 1), ((2, 3), 5, 5), ((2,), 4, 7)])
def test_relative_attention_matches_loop(lead, t_q, t_k, device):
    g = torch.Generator().manual_seed(1)
    d_k, d_v, max_distance = 4, 3, 2
    q = torch.randn(*lead, t_q, d_k, generator=g, dtype=torch.float64)
    k = torch.randn(*lead, t_k, d_k, generator=g, dtype=torch.float64)
    v = torch.randn(*lead, t_k, d_v, generator=g, dtype=torch.float64)
    table_k = torch.randn(2 * max_distance + 1, d_k, generator=g, dtype=torch.float64)
    table_v = torch.randn(2 * max_distance + 1, d_v, generator=g, dtype=torch.float64)
    index = relative_position_index(t_q, t_k, max_distance)
    rel_k, rel_v = table_k[index], table_v[index]
    mask = torch.rand(*lead, t_q, t_k, generator=g) > 0.3
    mask[..., 0, :] = False  # one query sees nothing: zeros, not NaN
    exp_out, exp_w = loop_relative_attention(q, k, v, rel_k, rel_v, mask)
    out, w = relative_attention(*(t.to(device) for t in (q, k, v, rel_k, rel_v, mask)))
    assert_close(out.cpu(), exp_out)
    assert_close(w.cpu(), exp_w)
    assert (w[..., 0, :] == 0).all() and (out[..., 0, :] == 0).all()
    out32, _ = relative_attention(*(t.to(device).float() for t in (q, k, v, rel_k, rel_v)))
    assert_close(out32.cpu(), loop_relative_attention(q, k, v, rel_k, rel_v)[0].float())


def test_relative_attention_without_positions_is_plain_attention(device):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 6, 8, generator=g).to(device) for _ in range(3))
    zeros = torch.zeros(6, 6, 8, device=device)
    mask = torch.ones(6, 6, dtype=torch.bool, device=device).tril()
    out, _ = relative_attention(q, k, v, zeros, zeros, mask)
    assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_relative_attention_gradcheck():
    g = torch.Generator().manual_seed(3)
    shapes = [(2, 3, 2), (2, 4, 2), (2, 4, 2), (3, 4, 2), (3, 4, 2)]
    q, k, v, rel_k, rel_v = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
                             for s in shapes)
    mask = torch.ones(3, 4, dtype=torch.bool).tril(1)
    mask[1] = False
    assert torch.autograd.gradcheck(lambda *a: relative_attention(*a, mask=mask), (q, k, v, rel_k, rel_v))


def test_relative_attention_rejects_bad_input():
    q = k = v = torch.randn(1, 3, 4)
    rel = torch.randn(3, 3, 4)
    with pytest.raises(ValueError, match=r"rel_k must have shape \(T_q, T_k, d_k\) = \(3, 3, 4\); got \(3, 2, 4\)"):
        relative_attention(q, k, v, rel[:, :2], rel)
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        relative_attention(q, k, v, rel, rel, mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match="max_distance must be a non-negative int; got -1"):
        relative_position_index(3, 3, -1)


def test_relative_multihead_matches_loop(device):
    torch.manual_seed(7)
    B, T_q, T_k, d_model, H, max_distance = 2, 5, 6, 12, 3, 2
    module = RelativeMultiHeadAttention(d_model, H, max_distance).double()
    for table in (module.rel_k, module.rel_v):
        torch.nn.init.normal_(table.weight)  # large enough to matter
    query = torch.randn(B, T_q, d_model, dtype=torch.float64)
    key_value = torch.randn(B, T_k, d_model, dtype=torch.float64)
    mask = torch.rand(B, 1, T_k) > 0.3  # key padding-like, shared by the queries
    mask[1] = False  # an all-padding sequence: zeros
    # reference: project, split into heads by hand, loop, concatenate, project
    heads = lambda x: x.view(B, -1, H, d_model // H).transpose(1, 2)  # noqa: E731
    index = relative_position_index(T_q, T_k, max_distance)
    out, w = loop_relative_attention(heads(module.W_q(query)), heads(module.W_k(key_value)),
                                     heads(module.W_v(key_value)), module.rel_k.weight[index],
                                     module.rel_v.weight[index], mask.unsqueeze(1))
    expected = module.W_o(out.transpose(1, 2).reshape(B, T_q, d_model))
    module.to(device)
    got, got_w = module(query.to(device), key_value.to(device), key_value.to(device), mask.to(device))
    assert_close(got.cpu(), expected)
    assert_close(got_w.cpu(), w)
    assert got_w.shape == (B, H, T_q, T_k)
    assert module(query.to(device), key_value.to(device), key_value.to(device), need_weights=False)[1] is None


def test_relative_multihead_without_positions_is_nn_multihead(device):
    """With both relative tables zero it is plain multi-head attention: compare with nn.MultiheadAttention."""
    torch.manual_seed(8)
    d_model, H = 16, 4
    module = RelativeMultiHeadAttention(d_model, H, max_distance=3).to(device)
    torch.nn.init.zeros_(module.rel_k.weight)
    torch.nn.init.zeros_(module.rel_v.weight)
    ref = torch.nn.MultiheadAttention(d_model, H, batch_first=True).to(device)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([module.W_q.weight, module.W_k.weight, module.W_v.weight]))
        ref.in_proj_bias.copy_(torch.cat([module.W_q.bias, module.W_k.bias, module.W_v.bias]))
        ref.out_proj.weight.copy_(module.W_o.weight)
        ref.out_proj.bias.copy_(module.W_o.bias)
    x = torch.randn(3, 7, d_model, device=device)
    key_padding_mask = torch.zeros(3, 7, dtype=torch.bool, device=device)  # True = ignore
    key_padding_mask[0, 5:] = True
    expected, expected_w = ref(x, x, x, key_padding_mask=key_padding_mask, average_attn_weights=False)
    got, got_w = module(x, x, x, mask=~key_padding_mask[:, None, :])
    assert_close(got, expected)
    assert_close(got_w, expected_w)


def test_relative_multihead_gradcheck():
    torch.manual_seed(9)
    module = RelativeMultiHeadAttention(4, 2, max_distance=1).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 3, dtype=torch.bool).tril()
    assert torch.autograd.gradcheck(lambda x, *params: module(x, x, x, mask)[0],
                                    (x, module.rel_k.weight, module.rel_v.weight, module.W_q.weight))


def test_relative_multihead_rejects_bad_input():
    with pytest.raises(ValueError, match=r"d_model \(10\) must be divisible by num_heads \(3\)"):
        RelativeMultiHeadAttention(10, 3, max_distance=2)
    with pytest.raises(ValueError, match="max_distance must be a non-negative int; got -2"):
        RelativeMultiHeadAttention(8, 2, max_distance=-2)
    module = RelativeMultiHeadAttention(8, 2, max_distance=2)
    x = torch.randn(2, 4, 8)
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        module(x, x, x, mask=torch.ones(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="d_model = 8"):
        module(x[..., :6], x, x)


# ---------------------------------------------------------------- Huang et al. 2019 skewing

def loop_relative_logits(q, rel_emb):
    """S[i, j] = q_i . E[j - i + L - 1], 0 where that row does not exist (causal, j > i)."""
    length = q.size(-2)
    out = torch.zeros(*q.shape[:-1], length, dtype=q.dtype)
    for i in range(length):
        for j in range(length):
            r = j - i + length - 1
            if r < rel_emb.size(0):
                out[..., i, j] = q[..., i, :] @ rel_emb[r]
    return out


@pytest.mark.parametrize("length", [1, 2, 5, 8])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_skewed_equals_naive(length, causal, device):
    g = torch.Generator().manual_seed(length)
    q = torch.randn(2, 3, length, 4, generator=g, dtype=torch.float64)
    rel_emb = torch.randn(length if causal else 2 * length - 1, 4, generator=g, dtype=torch.float64)
    expected = loop_relative_logits(q, rel_emb)
    q, rel_emb = q.to(device), rel_emb.to(device)
    assert_close(relative_logits_naive(q, rel_emb).cpu(), expected)
    assert_close(relative_logits_skewed(q, rel_emb).cpu(), expected)
    assert_close(relative_logits_skewed(q.float(), rel_emb.float()).cpu(), expected.float())


def test_skewed_matches_shaw_gather():
    """Unclipped Shaw keys (max_distance = L - 1) give the same relative logits as the skew."""
    g = torch.Generator().manual_seed(4)
    length, d = 6, 5
    q = torch.randn(3, length, d, generator=g, dtype=torch.float64)
    table = torch.randn(2 * length - 1, d, generator=g, dtype=torch.float64)
    rel_k = table[relative_position_index(length, length, length - 1)]  # (L, L, d)
    assert_close(relative_logits_skewed(q, table), torch.einsum("bid,ijd->bij", q, rel_k))


def test_skew_gradcheck():
    g = torch.Generator().manual_seed(5)
    for width in (3, 5):
        x = torch.randn(3, width, generator=g, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(skew, (x,))


def test_skew_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(\.\.\., L, L\) \(causal\) or \(\.\.\., L, 2L-1\).*got \(4, 5\)"):
        skew(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"rel_emb must have L = 4 rows \(causal\) or 2L - 1 = 7 rows"):
        relative_logits_skewed(torch.randn(2, 4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"rel_emb.shape\[1\] must equal d"):
        relative_logits_skewed(torch.randn(2, 4, 3), torch.randn(4, 2))


# ---------------------------------------------------------------- RoPE (Su et al. 2021)

def test_rotary_scores_depend_only_on_offset(device):
    g = torch.Generator().manual_seed(6)
    q = torch.randn(8, generator=g, dtype=torch.float64).to(device)
    k = torch.randn(8, generator=g, dtype=torch.float64).to(device)
    length = 12
    q_rot = apply_rotary(q.expand(length, 8))  # q placed at every position m
    k_rot = apply_rotary(k.expand(length, 8))
    scores = q_rot @ k_rot.T                    # scores[m, n] = <R_m q, R_n k>
    for offset in range(-length + 1, length):
        diagonal = torch.diagonal(scores, offset=-offset)  # all (m, n) with m - n = offset
        assert_close(diagonal, diagonal[:1].expand_as(diagonal))
    assert not torch.allclose(scores[0, 0], scores[1, 0])  # but the offset does matter


def test_rotary_is_a_rotation_of_pairs(device):
    x = torch.randn(2, 5, 6, device=device, dtype=torch.float64)
    out = apply_rotary(x)
    assert_close(out[:, 0], x[:, 0])  # position 0: no rotation
    pair_norms = lambda t: t.unflatten(-1, (3, 2)).norm(dim=-1)  # noqa: E731
    assert_close(pair_norms(out), pair_norms(x))
    # pair 0 of position 1 turns by exactly 1 radian (theta_0 = 1)
    c, s = math.cos(1.0), math.sin(1.0)
    assert_close(out[:, 1, :2], torch.stack([x[:, 1, 0] * c - x[:, 1, 1] * s,
                                             x[:, 1, 0] * s + x[:, 1, 1] * c], dim=-1))
    with pytest.raises(ValueError, match=r"d even; got \(2, 5, 5\)"):
        apply_rotary(torch.randn(2, 5, 5))

"""transformer_ref.attention against F.scaled_dot_product_attention, closed forms and naive loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from transformer_ref.attention import (AdditiveAttention, SelfAttention, additive_attention,
                                       dot_product_attention, fused_attention, scaled_dot_product_attention,
                                       self_attention)
from transformer_ref.masks import causal_mask

# (q batch shape, T_q, T_k, d_k, d_v): batch 1, odd sizes, cross shapes, 4-D heads, no batch.
SHAPES = [((1,), 1, 1, 1, 1), ((2,), 5, 5, 8, 8), ((3,), 3, 7, 5, 2), ((1,), 7, 3, 4, 6),
          ((2, 3), 4, 6, 8, 5), ((), 5, 4, 3, 3)]


def _qkv(batch, T_q, T_k, d_k, d_v, device, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, T_q, d_k, generator=g, dtype=dtype).to(device)
    k = torch.randn(*batch, T_k, d_k, generator=g, dtype=dtype).to(device)
    v = torch.randn(*batch, T_k, d_v, generator=g, dtype=dtype).to(device)
    return q, k, v


def _random_mask(shape, device, seed=1, p=0.7):
    """A random bool mask in which every query row keeps at least one key (torch's kernels give NaN otherwise)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < p
    mask[..., 0] = True
    return mask.to(device)


@pytest.mark.parametrize("batch,T_q,T_k,d_k,d_v", SHAPES)
@pytest.mark.parametrize("masking", ["none", "random", "causal", "broadcast"])
def test_sdpa_matches_torch(device, batch, T_q, T_k, d_k, d_v, masking):
    q, k, v = _qkv(batch, T_q, T_k, d_k, d_v, device)
    mask = {"none": None,
            "random": _random_mask((*batch, T_q, T_k), device),
            "causal": causal_mask(T_q, T_k, device=device),
            "broadcast": _random_mask((*batch[:1], *[1] * (len(batch) - 1), 1, T_k), device)}[masking]
    output, weights = scaled_dot_product_attention(q, k, v, mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert output.shape == (*batch, T_q, d_v) and weights.shape == (*batch, T_q, T_k)
    torch.testing.assert_close(output, expected)
    # Rows sum to 1, except rows with nothing to attend to (causal with T_q > T_k), which are 0.
    has_key = torch.ones_like(weights) if mask is None else mask.expand_as(weights)
    torch.testing.assert_close(weights.sum(-1), has_key.any(-1).to(weights.dtype))
    torch.testing.assert_close(weights @ v, output)
    if mask is not None:
        assert (weights[~mask.expand_as(weights)] == 0).all()
    torch.testing.assert_close(fused_attention(q, k, v, mask), expected)


def test_sdpa_closed_form_single_query(device):
    """One query, two keys: weights = softmax([q.k1, q.k2] / sqrt(d_k)) computed by hand."""
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=device, dtype=torch.float64)
    k = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], device=device, dtype=torch.float64)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]], device=device, dtype=torch.float64)
    w1 = math.exp(2 / 2) / (math.exp(2 / 2) + math.exp(0))
    output, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(weights, torch.tensor([[w1, 1 - w1]], device=device, dtype=torch.float64))
    torch.testing.assert_close(output, torch.tensor([[w1, 1 - w1]], device=device, dtype=torch.float64))


@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 1e-5, 1.3e-6), (torch.float16, 5e-3, 5e-3)])
def test_explicit_and_fused_agree_in_low_precision(device, dtype, atol, rtol):
    if dtype == torch.float16 and device.type == "cpu":
        pytest.skip("half-precision matmul is a GPU thing")
    q, k, v = _qkv((2, 4), 9, 11, 16, 16, device, dtype)
    mask = _random_mask((2, 1, 9, 11), device)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask).to(dtype)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask)[0], expected, atol=atol, rtol=rtol)
    torch.testing.assert_close(fused_attention(q, k, v, mask), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("attention", ["explicit", "fused"])
def test_fully_masked_rows_are_zero_without_nan_gradients(device, attention):
    q, k, v = (x.requires_grad_() for x in _qkv((2,), 4, 5, 3, 3, device))
    mask = _random_mask((2, 4, 5), device)
    mask[0, 1] = False  # query 1 of batch 0 may attend to nothing
    mask[1] = False  # batch 1 may attend to nothing at all
    if attention == "explicit":
        output, weights = scaled_dot_product_attention(q, k, v, mask)
        assert (weights[0, 1] == 0).all() and (weights[1] == 0).all()
    else:
        output = fused_attention(q, k, v, mask)
    assert (output[0, 1] == 0).all() and (output[1] == 0).all()
    assert torch.isfinite(output).all()
    output.pow(2).sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all()
    assert (q.grad[0, 1] == 0).all() and (q.grad[1] == 0).all() and (k.grad[1] == 0).all()
    # The rows that do attend are unaffected by the empty ones.
    reference = F.scaled_dot_product_attention(q[0].detach(), k[0].detach(), v[0].detach(), attn_mask=mask[0])
    torch.testing.assert_close(output[0, [0, 2, 3]].detach(), reference[[0, 2, 3]])


def test_sdpa_gradcheck(device):
    q, k, v = (x.requires_grad_() for x in _qkv((2,), 3, 4, 3, 2, device))
    mask = _random_mask((2, 3, 4), device)
    mask[1, 2] = False
    assert torch.autograd.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v, mask), (q, k, v))


def test_dropout_only_in_training(device):
    q, k, v = _qkv((4,), 6, 6, 8, 8, device)
    torch.manual_seed(0)
    out_train, w_train = scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=True)
    out_eval, w_eval = scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=False)
    torch.testing.assert_close(out_eval, F.scaled_dot_product_attention(q, k, v))
    kept = w_train != 0
    assert 0.2 < kept.double().mean().item() < 0.8
    torch.testing.assert_close(w_train[kept], 2 * w_eval[kept])  # inverted dropout: kept weights scaled 1/(1-p)
    torch.testing.assert_close(out_train, w_train @ v)


def test_dot_product_attention_closed_form(device):
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    output, weights = dot_product_attention(x)
    scores = torch.einsum("bid,bjd->bij", x, x)
    expected_w = scores.exp() / scores.exp().sum(-1, keepdim=True)
    torch.testing.assert_close(weights, expected_w)
    torch.testing.assert_close(output, torch.einsum("bij,bjd->bid", expected_w, x))


def test_self_attention_and_module(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, generator=g, dtype=torch.float64).to(device)
    W_q, W_k, W_v = (torch.randn(8, d, generator=g, dtype=torch.float64).to(device) for d in (4, 4, 6))
    mask = causal_mask(5, device=device)
    output, weights = self_attention(x, W_q, W_k, W_v, mask)
    expected = F.scaled_dot_product_attention(x @ W_q, x @ W_k, x @ W_v, attn_mask=mask)
    torch.testing.assert_close(output, expected)
    assert weights.shape == (3, 5, 5)

    module = SelfAttention(8, 4, 6).to(device).double()
    out_m, w_m = module(x, mask)
    out_f, w_f = self_attention(x, module.W_q.weight.T, module.W_k.weight.T, module.W_v.weight.T, mask)
    torch.testing.assert_close(out_m, out_f)
    torch.testing.assert_close(w_m, w_f)
    assert SelfAttention(8, 4, bias=True).W_v.out_features == 4 and SelfAttention(8, 4, bias=True).W_q.bias is not None


def _additive_reference(query, keys, values, W_q, W_k, w_v, mask):
    """Bahdanau attention with explicit loops over batch and time."""
    B, T = keys.shape[:2]
    contexts, all_weights = [], []
    for b in range(B):
        scores = [torch.tanh(query[b] @ W_q + keys[b, j] @ W_k) @ w_v for j in range(T)]
        exps = [s.exp() if mask is None or mask[b, j] else torch.zeros_like(s) for j, s in enumerate(scores)]
        weights = torch.stack(exps) / sum(exps)
        all_weights.append(weights)
        contexts.append(sum(weights[j] * values[b, j] for j in range(T)))
    return torch.stack(contexts), torch.stack(all_weights)


@pytest.mark.parametrize("with_mask", [False, True])
def test_additive_attention_matches_loop(device, with_mask):
    g = torch.Generator().manual_seed(0)
    B, T, d_q, d_kk, d_a, d_v = 3, 5, 4, 6, 7, 2
    args = [torch.randn(*s, generator=g, dtype=torch.float64).to(device)
            for s in ((B, d_q), (B, T, d_kk), (B, T, d_v), (d_q, d_a), (d_kk, d_a), (d_a,))]
    mask = _random_mask((B, T), device) if with_mask else None
    context, weights = additive_attention(*args, mask=mask)
    ref_context, ref_weights = _additive_reference(*args, mask)
    torch.testing.assert_close(context, ref_context)
    torch.testing.assert_close(weights, ref_weights)

    module = AdditiveAttention(d_q, d_kk, d_a).to(device).double()
    query, keys, values = args[:3]
    out_m = module(query, keys, values, mask)
    out_f = additive_attention(query, keys, values, module.W_q.weight.T, module.W_k.weight.T, module.w_v, mask)
    torch.testing.assert_close(out_m, out_f)


def test_additive_attention_empty_row_and_gradcheck(device):
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(*s, generator=g, dtype=torch.float64).to(device).requires_grad_()
            for s in ((2, 3), (2, 4, 3), (2, 4, 2), (3, 5), (3, 5), (5,))]
    mask = torch.tensor([[True, False, True, True], [False] * 4], device=device)
    context, weights = additive_attention(*args, mask=mask)
    assert (context[1] == 0).all() and (weights[1] == 0).all()
    assert torch.autograd.gradcheck(lambda *a: additive_attention(*a, mask=mask), args)


def test_bad_input_messages(device):
    q, k, v = _qkv((2,), 3, 4, 5, 6, device, torch.float32)
    with pytest.raises(ValueError, match=r"k.shape\[-1\] must equal d_k = q.shape\[-1\] = 5; got shape \(2, 4, 7\)"):
        scaled_dot_product_attention(q, torch.randn(2, 4, 7, device=device), v)
    with pytest.raises(ValueError, match=r"v.shape\[-2\] must equal T_k = k.shape\[-2\] = 4; got shape \(2, 3, 6\)"):
        scaled_dot_product_attention(q, k, v[:, :3])
    with pytest.raises(ValueError, match=r"q must have shape \(..., T_q, d_k\) \(at least 2-D\); got shape \(5,\)"):
        scaled_dot_product_attention(q[0, 0], k, v)
    with pytest.raises(ValueError, match=r"leading \(batch/head\) dimensions .* do not broadcast"):
        scaled_dot_product_attention(q, k[:1].expand(3, 4, 5), v)
    with pytest.raises(TypeError, match=r"mask must be a bool tensor \(True = may attend\); got torch.float32 "
                                        r"\(an additive float mask\?"):
        scaled_dot_product_attention(q, k, v, torch.zeros(3, 4, device=device))
    with pytest.raises(TypeError, match=r"mask must be a bool tensor .* got torch.int64 \(a 0/1 integer mask\? "
                                        r"convert with mask.bool\(\)\)"):
        fused_attention(q, k, v, torch.ones(3, 4, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match=r"mask of shape \(3, 3\) does not broadcast to \(..., T_q, T_k\) = "
                                         r"\(2, 3, 4\)"):
        scaled_dot_product_attention(q, k, v, torch.ones(3, 3, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match=r"mask of shape \(5, 2, 3, 4\) does not broadcast"):
        scaled_dot_product_attention(q, k, v, torch.ones(5, 2, 3, 4, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match=r"k is on meta but q is on"):
        scaled_dot_product_attention(q, k.to("meta"), v)
    with pytest.raises(ValueError, match=r"mask is on meta but the inputs are on"):
        scaled_dot_product_attention(q, k, v, torch.ones(3, 4, dtype=torch.bool, device="meta"))
    with pytest.raises(TypeError, match=r"k has dtype torch.float64 but q has dtype torch.float32"):
        scaled_dot_product_attention(q, k.double(), v)
    with pytest.raises(TypeError, match=r"q must be a floating-point tensor; got torch.int64"):
        scaled_dot_product_attention(q.long(), k, v)
    with pytest.raises(ValueError, match=r"W_k.shape\[0\] must equal d_model = x.shape\[-1\] = 5"):
        self_attention(q, torch.randn(5, 2, device=device), torch.randn(4, 2, device=device),
                       torch.randn(5, 2, device=device))
    with pytest.raises(ValueError, match=r"mask of shape \(2, 5\) does not broadcast to \(B, T\) = \(2, 4\)"):
        additive_attention(q[:, 0], k, v, torch.randn(5, 3, device=device), torch.randn(5, 3, device=device),
                           torch.randn(3, device=device), torch.ones(2, 5, dtype=torch.bool, device=device))

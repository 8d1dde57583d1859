"""transformer_ref.multihead against nn.MultiheadAttention with the weights copied over."""

import pytest
import torch

from transformer_ref.attention import scaled_dot_product_attention
from transformer_ref.masks import causal_mask, from_key_padding_mask
from transformer_ref.multihead import MultiHeadAttention, merge_heads, split_heads


def copy_into_torch_mha(ours: MultiHeadAttention, ref: torch.nn.MultiheadAttention) -> None:
    """Copy our weights into an nn.MultiheadAttention: in_proj packs W_q, W_k, W_v in that order."""
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.W_q.weight, ours.W_k.weight, ours.W_v.weight]))
        ref.out_proj.weight.copy_(ours.W_o.weight)
        if ours.W_q.bias is not None:
            ref.in_proj_bias.copy_(torch.cat([ours.W_q.bias, ours.W_k.bias, ours.W_v.bias]))
            ref.out_proj.bias.copy_(ours.W_o.bias)


def copy_to_torch_mha(ours: MultiHeadAttention) -> torch.nn.MultiheadAttention:
    """A new nn.MultiheadAttention (batch_first, eval mode) holding our weights."""
    ref = torch.nn.MultiheadAttention(ours.d_model, ours.num_heads, bias=ours.W_q.bias is not None,
                                      batch_first=True)
    ref = ref.to(device=ours.W_q.weight.device, dtype=ours.W_q.weight.dtype)
    copy_into_torch_mha(ours, ref)
    return ref.eval()


def _inputs(B, T_q, T_k, d_model, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(B, T_q, d_model, generator=g, dtype=torch.float64).to(device)
    memory = torch.randn(B, T_k, d_model, generator=g, dtype=torch.float64).to(device)
    return query, memory


def _key_padding(B, T_k, device, seed=1):
    """nn.MultiheadAttention convention (True = ignore); the first key is never padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T_k + 1, (B,), generator=g)
    return (torch.arange(T_k) >= lengths[:, None]).to(device)  # (B, T_k)


def test_split_merge_heads(device):
    x = torch.arange(2 * 3 * 12, dtype=torch.float32, device=device).view(2, 3, 12)
    heads = split_heads(x, 4)
    assert heads.shape == (2, 4, 3, 3)
    torch.testing.assert_close(heads[1, 2, 0], x[1, 0, 6:9])  # head h holds features h*d_k:(h+1)*d_k
    torch.testing.assert_close(merge_heads(heads), x)


@pytest.mark.parametrize("B,T_q,T_k,d_model,H,bias", [(1, 1, 1, 4, 1, True), (2, 5, 5, 12, 3, True),
                                                     (3, 4, 7, 8, 2, False), (2, 7, 3, 6, 6, True)])
@pytest.mark.parametrize("kind", ["self", "cross"])
@pytest.mark.parametrize("need_weights", [True, False])
def test_matches_torch_multihead_attention(device, B, T_q, T_k, d_model, H, bias, kind, need_weights):
    torch.manual_seed(0)
    ours = MultiHeadAttention(d_model, H, bias=bias).to(device).double().eval()
    ref = copy_to_torch_mha(ours)
    query, memory = _inputs(B, T_q, T_k, d_model, device)
    key = query if kind == "self" else memory
    kpm = _key_padding(B, key.size(1), device)
    out, weights = ours(query, key, key, mask=from_key_padding_mask(kpm), need_weights=need_weights)
    ref_out, ref_weights = ref(query, key, key, key_padding_mask=kpm, average_attn_weights=False)
    torch.testing.assert_close(out, ref_out)
    if need_weights:
        torch.testing.assert_close(weights, ref_weights)
    else:
        assert weights is None


@pytest.mark.parametrize("need_weights", [True, False])
def test_causal_and_per_head_masks_match_torch(device, need_weights):
    torch.manual_seed(0)
    B, T, d_model, H = 2, 6, 8, 2
    ours = MultiHeadAttention(d_model, H).to(device).double()
    ref = copy_to_torch_mha(ours)
    x, _ = _inputs(B, T, T, d_model, device)
    causal = causal_mask(T, device=device)
    out, _ = ours(x, x, x, mask=causal, need_weights=need_weights)
    torch.testing.assert_close(out, ref(x, x, x, attn_mask=~causal)[0])
    # A different mask per (batch, head): ours (B, H, T, T); torch's (B*H, T, T), True = ignore.
    per_head = torch.rand(B, H, T, T, generator=torch.Generator().manual_seed(3)).to(device) < 0.6
    per_head[..., 0] = True
    out, _ = ours(x, x, x, mask=per_head, need_weights=need_weights)
    torch.testing.assert_close(out, ref(x, x, x, attn_mask=~per_head.reshape(B * H, T, T))[0])


def test_explicit_and_fused_paths_agree_and_mask_shapes(device):
    torch.manual_seed(0)
    mha = MultiHeadAttention(12, 4).to(device).double()
    query, memory = _inputs(3, 5, 7, 12, device)
    mask3 = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(2)).to(device) < 0.5
    mask3[1, 2] = False  # an empty row: zero attention output, W_o's bias only
    for mask in (None, mask3, mask3[:, :1], mask3[0], mask3[0, 0], mask3.unsqueeze(1).expand(3, 4, 5, 7)):
        explicit, weights = mha(query, memory, memory, mask=mask)
        fused, none = mha(query, memory, memory, mask=mask, need_weights=False)
        torch.testing.assert_close(explicit, fused)
        assert weights.shape == (3, 4, 5, 7) and none is None
    torch.testing.assert_close(mha(query, memory, memory, mask3)[0][1, 2], mha.W_o.bias)


def test_weights_equal_per_head_attention(device):
    """Head h's weights are attention with the h-th slice of the projections (the paper's definition)."""
    torch.manual_seed(0)
    d_model, H = 8, 2
    d_k = d_model // H
    mha = MultiHeadAttention(d_model, H, bias=False).to(device).double()
    query, memory = _inputs(2, 3, 4, d_model, device)
    _, weights = mha(query, memory, memory)
    for h in range(H):
        rows = slice(h * d_k, (h + 1) * d_k)
        _, w_h = scaled_dot_product_attention(query @ mha.W_q.weight[rows].T, memory @ mha.W_k.weight[rows].T,
                                              memory @ mha.W_v.weight[rows].T)
        torch.testing.assert_close(weights[:, h], w_h)


def test_dropout_only_in_training(device):
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, dropout=0.5).to(device)
    x = torch.randn(2, 6, 8, device=device)
    mha.eval()
    a, _ = mha(x, x, x)
    torch.testing.assert_close(a, mha(x, x, x, need_weights=False)[0])
    mha.train()
    b, weights = mha(x, x, x)
    assert not torch.allclose(a, b)
    assert (weights == 0).any()
    assert not torch.allclose(a, mha(x, x, x, need_weights=False)[0])


def test_gradcheck(device):
    torch.manual_seed(0)
    mha = MultiHeadAttention(4, 2).to(device).double()
    query, memory = _inputs(2, 3, 2, 4, device)
    query.requires_grad_()
    memory.requires_grad_()
    mask = torch.tensor([[True, False], [True, True], [False, False]], device=device)
    assert torch.autograd.gradcheck(lambda q, m: mha(q, m, m, mask)[0], (query, memory))
    assert torch.autograd.gradcheck(lambda q, m: mha(q, m, m, mask, need_weights=False)[0], (query, memory))


def test_bad_input_messages(device):
    with pytest.raises(ValueError, match=r"d_model \(10\) must be divisible by num_heads \(3\)"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match=r"d_model \(10\) must be divisible by num_heads \(4\)"):
        split_heads(torch.zeros(1, 2, 10, device=device), 4)
    mha = MultiHeadAttention(8, 2).to(device)
    x = torch.zeros(2, 3, 8, device=device)
    with pytest.raises(ValueError, match=r"key.shape\[2\] must equal d_model = 8; got shape \(2, 3, 6\)"):
        mha(x, torch.zeros(2, 3, 6, device=device), x)
    with pytest.raises(ValueError, match=r"query must have shape \(B, T_q, d_model\) \(3-D\); got shape \(3, 8\)"):
        mha(x[0], x, x)
    with pytest.raises(ValueError, match=r"value.shape\[1\] must equal T_k = key.shape\[1\] = 3"):
        mha(x, x, x[:, :2])
    with pytest.raises(ValueError, match=r"key.shape\[0\] must equal B = query.shape\[0\] = 2"):
        mha(x, x[:1], x[:1])
    with pytest.raises(TypeError, match=r"mask must be a bool tensor \(True = may attend\); got torch.float32"):
        mha(x, x, x, torch.zeros(3, 3, device=device))
    with pytest.raises(TypeError, match=r"got torch.int64 \(a 0/1 integer mask\? convert with mask.bool\(\)\)"):
        mha(x, x, x, torch.ones(3, 3, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match=r"mask of shape \(2, 3, 4\) does not broadcast to \(B, T_q, T_k\) = "
                                         r"\(2, 3, 3\)"):
        mha(x, x, x, torch.ones(2, 3, 4, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match=r"mask of shape \(2, 3, 3, 3\) does not broadcast to \(B, H, T_q, T_k\)"):
        mha(x, x, x, torch.ones(2, 3, 3, 3, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match=r"query is on meta but the parameters of MultiHeadAttention are on"):
        mha(x.to("meta"), x, x)

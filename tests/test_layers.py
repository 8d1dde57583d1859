"""transformer_ref.layers against nn.LayerNorm and nn.TransformerEncoderLayer/DecoderLayer with copied weights."""

import pytest
import torch
import torch.nn.functional as F
from test_multihead import copy_into_torch_mha

from transformer_ref.layers import (AddNorm, DecoderLayer, EncoderLayer, LayerNorm, PositionwiseFeedForward,
                                    PreNormResidual, layer_norm)
from transformer_ref.masks import causal_mask, from_key_padding_mask

D_MODEL, HEADS, D_FF = 12, 3, 20


def _randn(*shape, device, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)


def _randomise_norms(module: torch.nn.Module, seed: int = 5) -> None:
    """Give every LayerNorm a non-trivial scale and shift, so that copying them is actually tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, LayerNorm):
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))


def _copy_linear_and_norm(ours: torch.nn.Module, ref: torch.nn.Module, pairs: list[tuple[str, str]]) -> None:
    with torch.no_grad():
        for ours_name, ref_name in pairs:
            src, dst = ours.get_submodule(ours_name), ref.get_submodule(ref_name)
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)


def torch_encoder_layer(ours: EncoderLayer, activation: str) -> torch.nn.TransformerEncoderLayer:
    ref = torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, activation=activation,
                                           layer_norm_eps=ours.norm1.eps, batch_first=True,
                                           norm_first=ours.norm_first)
    ref = ref.to(device=ours.norm1.weight.device, dtype=torch.float64)
    copy_into_torch_mha(ours.self_attn, ref.self_attn)
    _copy_linear_and_norm(ours, ref, [("feed_forward.linear1", "linear1"), ("feed_forward.linear2", "linear2"),
                                      ("norm1", "norm1"), ("norm2", "norm2")])
    return ref.eval()


def torch_decoder_layer(ours: DecoderLayer, activation: str) -> torch.nn.TransformerDecoderLayer:
    ref = torch.nn.TransformerDecoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, activation=activation,
                                           layer_norm_eps=ours.norm1.eps, batch_first=True,
                                           norm_first=ours.norm_first)
    ref = ref.to(device=ours.norm1.weight.device, dtype=torch.float64)
    copy_into_torch_mha(ours.self_attn, ref.self_attn)
    copy_into_torch_mha(ours.cross_attn, ref.multihead_attn)
    _copy_linear_and_norm(ours, ref, [("feed_forward.linear1", "linear1"), ("feed_forward.linear2", "linear2"),
                                      ("norm1", "norm1"), ("norm2", "norm2"), ("norm3", "norm3")])
    return ref.eval()


def _key_padding(B, T, device):
    """nn.Transformer convention (True = ignore): sequence b has T - b real tokens."""
    return (torch.arange(T) >= (T - torch.arange(B))[:, None]).to(device)  # (B, T)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 7), (1, 1, 4)])
def test_layer_norm_matches_torch(device, shape):
    x = _randn(*shape, device=device) * 3 + 1
    d = shape[-1]
    gamma, beta = _randn(d, device=device, seed=1), _randn(d, device=device, seed=2)
    for eps in (1e-5, 1e-12, 0.1):
        torch.testing.assert_close(layer_norm(x, gamma, beta, eps), F.layer_norm(x, (d,), gamma, beta, eps))
    ours, ref = LayerNorm(d, eps=1e-6).to(device).double(), torch.nn.LayerNorm(d, eps=1e-6).to(device).double()
    _randomise_norms(ours)
    ref.load_state_dict(ours.state_dict())  # same parameter names: weight, bias
    torch.testing.assert_close(ours(x), ref(x))


def test_layer_norm_gradcheck(device):
    args = [_randn(*s, device=device, seed=i).requires_grad_() for i, s in enumerate([(2, 3, 4), (4,), (4,)])]
    assert torch.autograd.gradcheck(lambda x, g, b: layer_norm(x, g, b), args)


def test_residual_blocks(device):
    x, y = _randn(2, 5, D_MODEL, device=device), _randn(2, 5, D_MODEL, device=device, seed=1)
    add_norm = AddNorm(D_MODEL).to(device).double()
    _randomise_norms(add_norm)
    w, b = add_norm.norm.weight, add_norm.norm.bias
    torch.testing.assert_close(add_norm(x, y), F.layer_norm(x + y, (D_MODEL,), w, b))
    pre = PreNormResidual(D_MODEL).to(device).double()
    _randomise_norms(pre)
    w, b = pre.norm.weight, pre.norm.bias
    torch.testing.assert_close(pre(x, torch.tanh), x + torch.tanh(F.layer_norm(x, (D_MODEL,), w, b)))


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_feed_forward_closed_form(device, activation):
    torch.manual_seed(0)
    ffn = PositionwiseFeedForward(D_MODEL, D_FF, activation=activation).to(device).double()
    x = _randn(2, 4, D_MODEL, device=device)
    act = {"relu": torch.relu, "gelu": lambda h: 0.5 * h * (1 + torch.erf(h / 2 ** 0.5))}[activation]
    expected = act(x @ ffn.linear1.weight.T + ffn.linear1.bias) @ ffn.linear2.weight.T + ffn.linear2.bias
    torch.testing.assert_close(ffn(x), expected)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_torch(device, norm_first, activation):
    torch.manual_seed(0)
    ours = EncoderLayer(D_MODEL, HEADS, D_FF, activation=activation, norm_first=norm_first).to(device).double()
    _randomise_norms(ours)
    ours.eval()
    ref = torch_encoder_layer(ours, activation)
    B, T = 3, 6
    x = _randn(B, T, D_MODEL, device=device)
    kpm = _key_padding(B, T, device)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours(x, from_key_padding_mask(kpm)), ref(x, src_key_padding_mask=kpm))
    causal = causal_mask(T, device=device)
    out, weights = ours(x, causal, need_weights=True)
    torch.testing.assert_close(out, ref(x, src_mask=~causal, is_causal=True))
    assert weights.shape == (B, HEADS, T, T) and (weights[..., ~causal] == 0).all()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_decoder_layer_matches_torch(device, norm_first, activation):
    torch.manual_seed(0)
    ours = DecoderLayer(D_MODEL, HEADS, D_FF, activation=activation, norm_first=norm_first).to(device).double()
    _randomise_norms(ours)
    ours.eval()
    ref = torch_decoder_layer(ours, activation)
    B, T, S = 3, 5, 7
    x, memory = _randn(B, T, D_MODEL, device=device), _randn(B, S, D_MODEL, device=device, seed=1)
    causal, tgt_kpm, mem_kpm = causal_mask(T, device=device), _key_padding(B, T, device), _key_padding(B, S, device)
    torch.testing.assert_close(ours(x, memory), ref(x, memory))
    self_mask = causal & from_key_padding_mask(tgt_kpm)  # (B, T, T)
    out, self_w, cross_w = ours(x, memory, self_mask, from_key_padding_mask(mem_kpm), need_weights=True)
    expected = ref(x, memory, tgt_mask=~causal, tgt_key_padding_mask=tgt_kpm, memory_key_padding_mask=mem_kpm)
    torch.testing.assert_close(out, expected)
    assert self_w.shape == (B, HEADS, T, T) and cross_w.shape == (B, HEADS, T, S)
    assert (cross_w[..., mem_kpm[:, None, None, :].expand_as(cross_w)] == 0).all()
    fused = ours(x, memory, self_mask, from_key_padding_mask(mem_kpm))
    torch.testing.assert_close(fused, out)


def test_post_ln_encoder_layer_is_two_add_norms(device):
    """The encoder layer written with the teaching blocks: AddNorm(x, MHA(x)), then AddNorm(h, FFN(h))."""
    torch.manual_seed(0)
    layer = EncoderLayer(D_MODEL, HEADS, D_FF).to(device).double()
    _randomise_norms(layer)
    add_norm1, add_norm2 = AddNorm(D_MODEL).to(device).double(), AddNorm(D_MODEL).to(device).double()
    add_norm1.norm.load_state_dict(layer.norm1.state_dict())
    add_norm2.norm.load_state_dict(layer.norm2.state_dict())
    x = _randn(2, 4, D_MODEL, device=device)
    h = add_norm1(x, layer.self_attn(x, x, x)[0])
    torch.testing.assert_close(layer(x), add_norm2(h, layer.feed_forward(h)))


def test_pre_ln_encoder_layer_is_two_pre_norm_residuals(device):
    torch.manual_seed(0)
    layer = EncoderLayer(D_MODEL, HEADS, D_FF, norm_first=True).to(device).double()
    _randomise_norms(layer)
    block1, block2 = PreNormResidual(D_MODEL).to(device).double(), PreNormResidual(D_MODEL).to(device).double()
    block1.norm.load_state_dict(layer.norm1.state_dict())
    block2.norm.load_state_dict(layer.norm2.state_dict())
    x = _randn(2, 4, D_MODEL, device=device)
    h = block1(x, lambda y: layer.self_attn(y, y, y)[0])
    torch.testing.assert_close(layer(x), block2(h, layer.feed_forward))


def test_dropout_only_in_training(device):
    torch.manual_seed(0)
    layer = DecoderLayer(D_MODEL, HEADS, D_FF, dropout=0.3).to(device)
    x, memory = torch.randn(2, 4, D_MODEL, device=device), torch.randn(2, 3, D_MODEL, device=device)
    layer.eval()
    torch.testing.assert_close(layer(x, memory), layer(x, memory))
    layer.train()
    assert not torch.allclose(layer(x, memory), layer(x, memory))


def test_bad_input_messages(device):
    with pytest.raises(ValueError, match=r"gamma.shape\[0\] must equal d_model = x.shape\[-1\] = 4; got shape \(3,\)"):
        layer_norm(torch.zeros(2, 4, device=device), torch.ones(3, device=device), torch.zeros(4, device=device))
    with pytest.raises(ValueError, match=r"activation must be one of 'relu', 'gelu'; got 'tanh'"):
        PositionwiseFeedForward(4, 8, activation="tanh")
    with pytest.raises(ValueError, match=r"d_model \(10\) must be divisible by num_heads \(4\)"):
        EncoderLayer(10, 4, 16)
    layer = DecoderLayer(8, 2, 16).to(device)
    x, memory = torch.zeros(2, 3, 8, device=device), torch.zeros(2, 5, 8, device=device)
    with pytest.raises(ValueError, match=r"memory.shape\[2\] must equal d_model = 8; got shape \(2, 5, 6\)"):
        layer(x, memory[..., :6])
    with pytest.raises(ValueError, match=r"memory_mask of shape \(2, 3, 3\) does not broadcast to \(B, T_q, T_k\) "
                                         r"= \(2, 3, 5\)"):
        layer(x, memory, memory_mask=torch.ones(2, 3, 3, dtype=torch.bool, device=device))
    with pytest.raises(TypeError, match=r"self_mask must be a bool tensor \(True = may attend\); got torch.float32"):
        layer(x, memory, self_mask=torch.zeros(3, 3, device=device))
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, d_model\) \(3-D\); got shape \(3, 8\)"):
        EncoderLayer(8, 2, 16).to(device)(x[0])
    with pytest.raises(ValueError, match=r"x is on meta but the parameters of EncoderLayer are on"):
        EncoderLayer(8, 2, 16).to(device)(x.to("meta"))
    with pytest.raises(ValueError, match=r"memory is on meta but the parameters of DecoderLayer are on"):
        layer(x, memory.to("meta"))

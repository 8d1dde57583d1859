"""transformer_ref.masks against closed forms and nn.MultiheadAttention's conventions."""

import pytest
import torch

from transformer_ref.masks import (causal_mask, combine_masks, decoder_self_attention_mask,
                                   from_key_padding_mask, padding_mask, to_additive_mask)


@pytest.mark.parametrize("T_q,T_k", [(1, 1), (4, 4), (3, 7), (5, 2)])
def test_causal_mask_matches_definition(device, T_q, T_k):
    mask = causal_mask(T_q, T_k, device=device)
    expected = torch.tensor([[j <= i + (T_k - T_q) for j in range(T_k)] for i in range(T_q)], device=device)
    assert mask.dtype == torch.bool and mask.device.type == device.type
    torch.testing.assert_close(mask, expected)


def test_causal_mask_square_is_the_complement_of_torchs(device):
    # nn.Transformer.generate_square_subsequent_mask: 0 = may attend, -inf = blocked.
    reference = torch.nn.Transformer.generate_square_subsequent_mask(6, device=device) == 0
    torch.testing.assert_close(causal_mask(6, device=device), reference)


def test_padding_mask(device):
    tokens = torch.tensor([[5, 3, 0, 0], [1, 2, 3, 4], [0, 0, 0, 0]], device=device)
    mask = padding_mask(tokens, pad_id=0)
    assert mask.shape == (3, 1, 4)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool, device=device)
    torch.testing.assert_close(mask[:, 0], expected)


def test_decoder_self_attention_mask_is_padding_and_causal(device):
    tokens = torch.tensor([[7, 8, 9, 1, 1], [7, 1, 1, 1, 1]], device=device)
    mask = decoder_self_attention_mask(tokens, pad_id=1)
    assert mask.shape == (2, 5, 5)
    for b in range(2):
        for i in range(5):
            for j in range(5):
                assert mask[b, i, j].item() == (j <= i and tokens[b, j].item() != 1)


def test_combine_masks(device):
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(2, 1, 5, generator=g) > 0.3).to(device)
    c = causal_mask(4, 5, device=device)
    torch.testing.assert_close(combine_masks(a, None, c), a & c)
    assert combine_masks(a, c).shape == (2, 4, 5)
    assert combine_masks(None, None) is None
    assert combine_masks(a) is a


def test_combine_masks_rejects_bad_masks(device):
    a = torch.ones(2, 3, dtype=torch.bool, device=device)
    with pytest.raises(TypeError, match=r"masks\[1\] must be a bool tensor.*got torch.int64.*mask.bool\(\)"):
        combine_masks(a, torch.ones(2, 3, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match=r"do not broadcast together"):
        combine_masks(a, torch.ones(4, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match=r"masks\[1\] is on meta but masks\[0\] is on"):
        combine_masks(a, torch.ones(2, 3, dtype=torch.bool, device="meta"))


def test_from_key_padding_mask_matches_multihead_attention(device):
    """Our converted mask + F.sdpa equals nn.MultiheadAttention's key_padding_mask semantics."""
    torch.manual_seed(0)
    kpm = torch.tensor([[False, False, True], [False, True, True]], device=device)  # True = ignore
    ours = from_key_padding_mask(kpm)
    assert ours.shape == (2, 1, 3)
    torch.testing.assert_close(ours[:, 0], ~kpm)
    mha = torch.nn.MultiheadAttention(4, 1, batch_first=True, bias=False).to(device).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64, device=device)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.eye(4, dtype=torch.float64).repeat(3, 1))
        mha.out_proj.weight.copy_(torch.eye(4))
    expected, _ = mha(x, x, x, key_padding_mask=kpm)
    actual = torch.nn.functional.scaled_dot_product_attention(x, x, x, attn_mask=ours)
    torch.testing.assert_close(actual, expected)
    with pytest.raises(TypeError, match=r"key_padding_mask must be a bool tensor \(True = ignore"):
        from_key_padding_mask(kpm.float())


def test_to_additive_mask_equals_bool_mask_in_sdpa(device):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, 8, dtype=torch.float64, device=device) for _ in range(3))
    mask = causal_mask(4, device=device)
    additive = to_additive_mask(mask, torch.float64)
    assert additive.dtype == torch.float64
    torch.testing.assert_close(additive[mask], torch.zeros_like(additive[mask]))
    assert torch.isneginf(additive[~mask]).all()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    torch.testing.assert_close(sdpa(q, k, v, attn_mask=additive), sdpa(q, k, v, attn_mask=mask))


def test_bad_arguments(device):
    with pytest.raises(ValueError, match=r"T_q must be a positive int; got 0"):
        causal_mask(0)
    with pytest.raises(TypeError, match=r"tokens must be an integer tensor of token ids.*got torch.float32"):
        padding_mask(torch.zeros(2, 3, device=device), 0)
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, T\).*got shape \(3,\)"):
        padding_mask(torch.zeros(3, dtype=torch.long, device=device), 0)
    with pytest.raises(TypeError, match=r"mask must be a bool tensor \(True = may attend\); got torch.float32"):
        to_additive_mask(torch.ones(2, 2, device=device))

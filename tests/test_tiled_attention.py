"""transformer_ref.tiled_attention: the online softmax over key/value tiles against the explicit formula.

Exact (equal to scaled_dot_product_attention to rounding, outputs and gradients) for every mask the package
uses, T_q != T_k and block sizes that do not divide T; the largest tensor it builds is O(T * block), where
the explicit path's is T_q * T_k; float32/float64 on the CPU, bfloat16/float16 on CUDA (`cuda` tests).
"""

from __future__ import annotations

import math

import pytest
import torch

from transformer_ref.attention import scaled_dot_product_attention
from transformer_ref.masks import causal_mask
from transformer_ref.tiled_attention import largest_intermediate, online_softmax_step, tiled_attention

TOL = {torch.float64: dict(atol=1e-12, rtol=1e-12), torch.float32: dict(atol=2e-6, rtol=2e-6),
       torch.bfloat16: dict(atol=3e-2, rtol=3e-2), torch.float16: dict(atol=5e-3, rtol=5e-3)}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _qkv(B=2, H=3, T_q=37, T_k=45, d_k=8, d_v=5, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, H, T_q, d_k), (B, H, T_k, d_k), (B, H, T_k, d_v))
    return tuple(torch.randn(s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for s in shapes)


def _masks(B, T_q, T_k, device="cpu"):
    """The package's masks: none, key padding (B, 1, 1, T_k) with one sequence all padding, a random full
    mask with an empty query row, a 2-D causal mask, a 1-D key mask."""
    g = torch.Generator().manual_seed(1)
    padding = torch.ones(B, 1, 1, T_k, dtype=torch.bool)
    padding[0, ..., T_k // 2:] = False
    padding[-1] = False
    full = torch.rand(B, 1, T_q, T_k, generator=g) > 0.3
    full[0, 0, 3] = False
    keys = torch.arange(T_k) % 3 != 0
    masks = {"none": None, "padding": padding, "random with an empty row": full,
             "causal 2-D": causal_mask(T_q, T_k), "1-D keys": keys}
    return {name: (None if m is None else m.to(device)) for name, m in masks.items()}


BLOCKS = [dict(block_k=1), dict(block_k=7), dict(block_k=16, block_q=5), dict(block_k=64), dict(block_k=45)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("blocks", BLOCKS, ids=lambda b: ",".join(f"{k}={v}" for k, v in b.items()))
def test_equals_the_explicit_formula_for_every_mask(dtype, blocks):
    q, k, v = _qkv(dtype=dtype)
    for name, mask in _masks(2, 37, 45).items():
        expected = scaled_dot_product_attention(q, k, v, mask)[0]
        torch.testing.assert_close(tiled_attention(q, k, v, mask, **blocks), expected, **TOL[dtype],
                                   msg=lambda m: f"mask {name}: {m}")


@pytest.mark.parametrize("T_q, T_k", [(37, 45), (45, 37), (1, 30), (30, 1), (16, 16)])
@pytest.mark.parametrize("blocks", BLOCKS[:3], ids=lambda b: ",".join(f"{k}={v}" for k, v in b.items()))
def test_causal_by_block_equals_the_causal_mask(T_q, T_k, blocks):
    """causal=True follows masks.causal_mask (query i sees j <= i + T_k - T_q), alone and with a padding mask;
    with T_q > T_k the first queries see no key at all and give zeros."""
    q, k, v = _qkv(T_q=T_q, T_k=T_k)
    padding = torch.rand(2, 1, 1, T_k, generator=torch.Generator().manual_seed(2)) > 0.2
    for mask in (None, padding):
        full = causal_mask(T_q, T_k) if mask is None else mask & causal_mask(T_q, T_k)
        expected = scaled_dot_product_attention(q, k, v, full)[0]
        torch.testing.assert_close(tiled_attention(q, k, v, mask, causal=True, **blocks), expected, **TOL[q.dtype])


def test_causal_skips_the_tiles_above_the_diagonal(monkeypatch):
    """With causal=True the tiles wholly above the diagonal are never computed: about half the score
    entries of T = 64 in tiles of 8 (36 of 64 tiles)."""
    import transformer_ref.tiled_attention as tiled
    q, k, v = _qkv(T_q=64, T_k=64)
    computed = []
    real = tiled.online_softmax_step

    def counting(m, l, acc, scores, v_tile):
        computed.append(scores.shape[-2] * scores.shape[-1])
        return real(m, l, acc, scores, v_tile)

    monkeypatch.setattr(tiled, "online_softmax_step", counting)
    tiled_attention(q, k, v, block_k=8, block_q=8, causal=True)
    assert len(computed) == 8 * 9 // 2 and sum(computed) == 36 * 64
    computed.clear()
    tiled_attention(q, k, v, block_k=8, block_q=8)
    assert len(computed) == 64


def test_fully_masked_rows_give_zeros_and_finite_gradients():
    q, k, v = (t.requires_grad_() for t in _qkv(T_q=6, T_k=10))
    mask = torch.ones(2, 1, 6, 10, dtype=torch.bool)
    mask[0, 0, 2] = False                                   # one query of batch 0 sees nothing
    mask[1] = False                                         # batch 1 sees nothing at all
    mask[0, 0, 4, :4] = False                               # the first tile of query 4 is fully masked
    out = tiled_attention(q, k, v, mask, block_k=4)
    assert torch.isfinite(out).all()
    assert out[1].abs().max() == 0 and out[0, :, 2].abs().max() == 0 and out[0, :, 4].abs().max() > 0
    torch.testing.assert_close(out, scaled_dot_product_attention(q, k, v, mask)[0], **TOL[q.dtype])
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("blocks", [dict(block_k=7), dict(block_k=16, block_q=5)], ids=["k7", "k16q5"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gradients_equal_the_explicit_path(blocks, causal):
    q, k, v = _qkv(dtype=torch.float64)
    mask = _masks(2, 37, 45)["random with an empty row"]
    full = mask & causal_mask(37, 45) if causal else mask
    grad_out = torch.randn(2, 3, 37, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours = torch.autograd.grad(tiled_attention(*(t.requires_grad_() for t in (q, k, v)), mask, causal=causal,
                                               **blocks), (q, k, v), grad_out)
    theirs = torch.autograd.grad(scaled_dot_product_attention(q, k, v, full)[0], (q, k, v), grad_out)
    for name, a, b in zip("qkv", ours, theirs):
        torch.testing.assert_close(a, b, **TOL[torch.float64], msg=lambda m: f"grad of {name}: {m}")


def test_gradcheck_through_the_tiles():
    q, k, v = (t.requires_grad_() for t in _qkv(B=1, H=1, T_q=5, T_k=11, d_k=3, d_v=2))
    mask = torch.rand(5, 11, generator=torch.Generator().manual_seed(4)) > 0.3
    mask[1] = False
    assert torch.autograd.gradcheck(lambda a, b, c: tiled_attention(a, b, c, mask, block_k=4, block_q=2,
                                                                    causal=True), (q, k, v))


def test_the_online_step_rescales_when_the_max_grows():
    """Two tiles whose second holds a larger score: the state after both steps is the softmax of all the
    scores (l and acc rescaled by exp(m_old - m_new)); not rescaling the sum or the accumulator is visibly wrong."""
    scores = torch.tensor([[1.0, 2.0, 5.0, 0.5]], dtype=torch.float64)
    v = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
    m, l, acc = torch.full((1, 1), -math.inf, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64), \
        torch.zeros(1, 1, dtype=torch.float64)
    m1, l1, acc1 = online_softmax_step(m, l, acc, scores[:, :2], v[:2])
    assert m1.item() == 2.0
    m2, l2, acc2 = online_softmax_step(m1, l1, acc1, scores[:, 2:], v[2:])
    assert m2.item() == 5.0
    torch.testing.assert_close(l2, torch.exp(scores - 5.0).sum(-1, keepdim=True))
    torch.testing.assert_close(acc2 / l2, torch.softmax(scores, -1) @ v)
    no_rescale_l = l1 + torch.exp(scores[:, 2:] - 5.0).sum(-1, keepdim=True)
    no_rescale_acc = acc1 + torch.exp(scores[:, 2:] - 5.0) @ v[2:]
    assert not torch.allclose(acc2 / no_rescale_l, acc2 / l2) and not torch.allclose(no_rescale_acc, acc2)


@pytest.mark.parametrize("T", [256, 512])
def test_largest_intermediate_is_linear_in_T(T):
    """The explicit path builds T x T scores; the tiled path never more than a (T, block_k) tile (or
    (block_q, block_k) with query blocking), whatever T, forward and backward."""
    B, H, d, block = 1, 2, 16, 32
    q, k, v = (t.float().requires_grad_() for t in _qkv(B, H, T, T, d, d))
    explicit = largest_intermediate(lambda: scaled_dot_product_attention(q, k, v)[0].sum().backward())
    assert explicit.numel >= B * H * T * T
    tiled = largest_intermediate(lambda: tiled_attention(q, k, v, block_k=block).sum().backward())
    assert tiled.numel <= B * H * T * max(block, d), tiled.shape
    with torch.no_grad():
        blocked = largest_intermediate(lambda: tiled_attention(q, k, v, block_k=block, block_q=block))
    assert blocked.numel <= B * H * max(block * block, T * d), blocked.shape


def test_argument_errors_name_the_argument():
    q, k, v = _qkv(T_q=4, T_k=6)
    with pytest.raises(ValueError, match="block_k must be a positive int; got 0"):
        tiled_attention(q, k, v, block_k=0)
    with pytest.raises(ValueError, match="block_q must be a positive int; got 2.5"):
        tiled_attention(q, k, v, block_q=2.5)
    with pytest.raises(TypeError, match="causal must be a bool; got str"):
        tiled_attention(q, k, v, causal="yes")
    with pytest.raises(TypeError, match=r"mask must be a bool tensor \(True = may attend\); got torch.float32"):
        tiled_attention(q, k, v, torch.zeros(4, 6))
    with pytest.raises(ValueError, match=r"mask of shape \(5, 6\) does not broadcast"):
        tiled_attention(q, k, v, torch.ones(5, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"k.shape\[-1\] must equal d_k"):
        tiled_attention(q, k[..., :3], v)
    with pytest.raises(TypeError, match="q must be a floating-point tensor"):
        tiled_attention(q.long(), k, v)


# --- CUDA: bf16 / fp16 ---------------------------------------------------------------------------------

@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_equals_the_explicit_formula_cuda(dtype):
    """Half inputs, float32 running state: within half rounding of the explicit path in the same dtype, and
    closer than that to the float64 answer."""
    q, k, v = _qkv(T_q=200, T_k=300, d_k=64, d_v=64, dtype=dtype, device="cuda")
    for name, mask in _masks(2, 200, 300, "cuda").items():
        for causal in (False, True):
            full = causal_mask(200, 300, device="cuda") if causal else None
            full = mask if full is None else (full if mask is None else mask & full)
            ours = tiled_attention(q, k, v, mask, block_k=64, block_q=48, causal=causal)
            explicit = scaled_dot_product_attention(q, k, v, full)[0]
            torch.testing.assert_close(ours, explicit, **TOL[dtype], msg=lambda m: f"{name}, causal={causal}: {m}")
            exact = scaled_dot_product_attention(q.double(), k.double(), v.double(), full)[0]
            assert (ours.double() - exact).abs().max() <= (explicit.double() - exact).abs().max() + TOL[dtype]["atol"]


@pytest.mark.cuda
@cuda
def test_gradients_cuda_bf16():
    q, k, v = (t.requires_grad_() for t in _qkv(T_q=128, T_k=128, d_k=32, d_v=32, dtype=torch.bfloat16,
                                                 device="cuda"))
    grad_out = torch.randn(2, 3, 128, 32, device="cuda", dtype=torch.bfloat16)
    ours = torch.autograd.grad(tiled_attention(q, k, v, block_k=32, causal=True), (q, k, v), grad_out)
    theirs = torch.autograd.grad(scaled_dot_product_attention(q, k, v, causal_mask(128, device="cuda"))[0],
                                 (q, k, v), grad_out)
    for a, b in zip(ours, theirs):
        assert torch.isfinite(a).all()
        scale = b.float().abs().max()
        torch.testing.assert_close(a.float() / scale, b.float() / scale, atol=5e-2, rtol=5e-2)


@pytest.mark.cuda
@cuda
def test_memory_is_linear_in_T_cuda():
    """At T = 8192 the explicit scores alone take B*H*T*T*2 bytes; the tiled forward stays far below."""
    B, H, T, d = 1, 4, 8192, 64
    q, k, v = (torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        tiled_attention(q, k, v, block_k=256, block_q=1024)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < B * H * T * T * 2 / 16

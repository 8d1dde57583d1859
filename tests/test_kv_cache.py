"""transformer_ref.kv_cache: incremental decoding gives what re-running the prefix gives; grouped-query attention.

- DecoderOnlyLM and the encoder-decoder Transformer: greedy tokens with use_cache identical to re-running the
  prefix; each step's logits equal the full run's, with source padding, target padding and a given mask.
- A cached step builds nothing of size t x t (a new token costs O(t d) attention).
- num_kv_heads: equal to multi-head attention with each key/value head repeated; num_kv_heads = num_heads is
  today's MultiHeadAttention exactly (parameters, state dict, outputs).
- The cache's memory: 2 * layers * H_kv * d_head * T * batch * bytes, by hand and against a filled cache.
"""

from __future__ import annotations

import pytest
import torch

from transformer_ref.attention import scaled_dot_product_attention
from transformer_ref.kv_cache import PUBLISHED_MODELS, KVCache, kv_cache_bytes
from transformer_ref.layers import EncoderLayer
from transformer_ref.masks import causal_mask, padding_mask
from transformer_ref.model import DecoderOnlyLM, Transformer
from transformer_ref.multihead import MultiHeadAttention, grouped_query_attention
from transformer_ref.tiled_attention import largest_intermediate

FP32 = dict(atol=2e-5, rtol=2e-5)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
KV_HEADS = [None, 2, 1]


def _lm(num_kv_heads=None, norm_first=False, device="cpu", seed=0):
    torch.manual_seed(seed)
    return DecoderOnlyLM(13, d_model=16, num_heads=4, num_layers=2, d_ff=32, max_len=48, norm_first=norm_first,
                         num_kv_heads=num_kv_heads).to(device).eval()


def _transformer(num_kv_heads=None, norm_first=False, device="cpu", seed=0):
    torch.manual_seed(seed)
    return Transformer(11, 11, d_model=16, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, d_ff=32,
                       dropout=0.0, max_len=40, norm_first=norm_first, num_kv_heads=num_kv_heads).to(device).eval()


# ------------------------------------------------------------------------------ DecoderOnlyLM

@pytest.mark.parametrize("num_kv_heads", KV_HEADS, ids=["mha", "gqa2", "mqa"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-ln", "pre-ln"])
def test_lm_greedy_with_cache_equals_rerunning_the_prefix(device, num_kv_heads, norm_first):
    lm = _lm(num_kv_heads, norm_first, device)
    prefix = torch.randint(0, 13, (3, 5), generator=torch.Generator().manual_seed(1)).to(device)
    slow = lm.greedy_generate(prefix, 30)
    fast = lm.greedy_generate(prefix, 30, use_cache=True)
    assert fast.shape == (3, 35)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("need_weights", [False, True], ids=["fused", "explicit"])
def test_lm_each_cached_step_gives_the_full_runs_logits(need_weights):
    """A prefill of 4 positions, then one token at a time: every step's logits equal those of one full run,
    on the fused and on the explicit attention path."""
    lm = _lm(2)
    tokens = torch.randint(0, 13, (2, 12), generator=torch.Generator().manual_seed(2))
    full = lm(tokens)                                                   # (2, 12, 13)
    cache = lm.new_cache()
    steps = [lm(tokens[:, :4], cache=cache)]
    steps += [lm(tokens[:, :t + 1], cache=cache) for t in range(4, 12)]
    assert [s.size(1) for s in steps] == [4] + [1] * 8
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **FP32)
    assert len(cache[0]) == 12 and cache[0].keys.shape == (2, 2, 12, 4)

    x, c = lm.embedding(tokens), lm.new_cache()
    out = lm.blocks(x[:, :5], causal_mask(5), need_weights=need_weights, cache=c)
    out2 = lm.blocks(x[:, 5:6], causal_mask(1, 6), need_weights=need_weights, cache=c)  # x: positions already added
    expected = lm.blocks(x[:, :6], causal_mask(6), need_weights=need_weights)
    expected = expected[0] if need_weights else expected
    got = torch.cat([out[0], out2[0]] if need_weights else [out, out2], dim=1)
    torch.testing.assert_close(got, expected, **FP32)
    if need_weights:
        assert out2[1][0].shape == (2, 4, 1, 6)                        # one query row against all 6 keys


def test_lm_cache_with_a_padding_mask():
    """A left-padded batch: a given mask (padding & causal) covers the rows of the new positions, (B, T - t, T)."""
    lm = _lm()
    tokens = torch.randint(1, 13, (3, 10), generator=torch.Generator().manual_seed(3))
    keep = torch.ones(3, 10, dtype=torch.bool)
    keep[1, :3] = False                                                 # three padding positions
    keep[2, :1] = False
    mask = keep.unsqueeze(1) & causal_mask(10)                          # (B, T, T)
    full = lm(tokens, mask)
    cache = lm.new_cache()
    steps = [lm(tokens[:, :6], mask[:, :6, :6], cache=cache)]
    steps += [lm(tokens[:, :t + 1], mask[:, t:t + 1, :t + 1], cache=cache) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **FP32)
    without_padding = lm(tokens)
    assert not torch.allclose(without_padding[1], full[1], atol=1e-3)  # the mask mattered


def test_a_cached_step_builds_nothing_quadratic_in_t():
    """At t = 400 cached positions a new token's largest tensor is O(t d) (the cache itself), not t x t."""
    torch.manual_seed(0)
    lm = DecoderOnlyLM(13, d_model=16, num_heads=4, num_layers=1, d_ff=32, max_len=512).eval()
    tokens = torch.randint(0, 13, (1, 401))
    cache = lm.new_cache()
    with torch.no_grad():
        lm(tokens[:, :400], cache=cache)
        step = largest_intermediate(lambda: lm(tokens, cache=cache))
        rerun = largest_intermediate(lambda: lm(tokens))
    assert rerun.numel >= 401 * 401
    assert step.numel <= 401 * 16, step.shape


# --------------------------------------------------------------------- encoder-decoder Transformer

@pytest.mark.parametrize("num_kv_heads", KV_HEADS, ids=["mha", "gqa2", "mqa"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-ln", "pre-ln"])
def test_transformer_greedy_with_cache_equals_rerunning_the_prefix(device, num_kv_heads, norm_first):
    model = _transformer(num_kv_heads, norm_first, device)
    src = torch.randint(3, 11, (5, 9), generator=torch.Generator().manual_seed(4))
    src[1, 5:] = 0                                                      # source padding
    src[3, 2:] = 0
    src = src.to(device)
    for eos_id in (2, 5):                                               # 5: some sequences end early, then pad
        slow = model.greedy_decode(src, 1, eos_id, 30)
        fast = model.greedy_decode(src, 1, eos_id, 30, use_cache=True)
        assert torch.equal(fast, slow), eos_id


def test_transformer_cached_decode_equals_full_decode_with_target_padding():
    """Target padding in the middle of the sequence (a finished sentence's pad tokens) is masked as a key
    on both paths; the cross-attention cache is filled once and reused."""
    model = _transformer(2)
    g = torch.Generator().manual_seed(5)
    src, tgt = torch.randint(1, 11, (3, 7), generator=g), torch.randint(1, 11, (3, 9), generator=g)
    src[0, 4:] = 0
    tgt[1, 3:] = 0
    tgt[2, 5:7] = 0
    memory = model.encode(src)
    full = model.decode(tgt, memory, src)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, :2], memory, src, cache=cache)]
    cross = cache[0].cross_attn.keys
    steps += [model.decode(tgt[:, :t + 1], memory, src, cache=cache) for t in range(2, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **FP32)
    assert cache[0].cross_attn.keys is cross and cross.shape == (3, 2, 7, 4)
    assert len(cache[1].self_attn) == 9


def test_a_cross_attention_cache_refuses_another_memory():
    model = _transformer()
    src = torch.randint(1, 11, (2, 6))
    memory = model.encode(src)
    cache = model.new_cache()
    tgt = torch.ones(2, 1, dtype=torch.long)
    model.decode(tgt, memory, src, cache=cache)
    with pytest.raises(ValueError, match="cross-attention cache holds the keys and values of another memory"):
        model.decode(torch.ones(2, 2, dtype=torch.long), memory.clone(), src, cache=cache)


# --------------------------------------------------------------------------- grouped-query attention

def _repeated_kv(gqa: MultiHeadAttention) -> MultiHeadAttention:
    """The MultiHeadAttention with H key/value heads that repeats each of gqa's H_kv heads H / H_kv times."""
    mha = MultiHeadAttention(gqa.d_model, gqa.num_heads).to(gqa.W_q.weight.dtype)
    G = gqa.num_heads // gqa.num_kv_heads
    with torch.no_grad():
        for name in ("W_q", "W_o"):
            getattr(mha, name).load_state_dict(getattr(gqa, name).state_dict())
        for name in ("W_k", "W_v"):
            src, dst = getattr(gqa, name), getattr(mha, name)
            dst.weight.copy_(src.weight.unflatten(0, (gqa.num_kv_heads, gqa.d_k)).repeat_interleave(G, 0).flatten(0, 1))
            dst.bias.copy_(src.bias.unflatten(0, (gqa.num_kv_heads, gqa.d_k)).repeat_interleave(G, 0).flatten())
    return mha


@pytest.mark.parametrize("num_kv_heads", [1, 2, 3], ids=["mqa", "gqa2", "gqa3"])
@pytest.mark.parametrize("need_weights", [True, False], ids=["explicit", "fused"])
def test_gqa_equals_mha_with_the_kv_heads_repeated(device, num_kv_heads, need_weights):
    torch.manual_seed(0)
    gqa = MultiHeadAttention(24, 6, num_kv_heads=num_kv_heads).double().to(device)
    mha = _repeated_kv(gqa).to(device)
    assert gqa.W_k.weight.shape == (num_kv_heads * 4, 24)
    g = torch.Generator().manual_seed(1)
    query, memory = torch.randn(3, 5, 24, generator=g, dtype=torch.float64), \
        torch.randn(3, 7, 24, generator=g, dtype=torch.float64)
    query, memory = query.to(device), memory.to(device)
    per_head = torch.rand(3, 6, 5, 7, generator=g).to(device) > 0.3
    per_head[0, 1, 2] = False                                           # an empty row in one head
    for mask in (None, padding_mask(torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [0] * 7]), 0).to(device), per_head):
        ours, w_ours = gqa(query, memory, memory, mask, need_weights)
        theirs, w_theirs = mha(query, memory, memory, mask, need_weights)
        torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-12)
        if need_weights:
            torch.testing.assert_close(w_ours, w_theirs, atol=1e-12, rtol=1e-12)


def test_grouped_query_attention_function_equals_repeating():
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(2, 6, 5, 4, generator=g), torch.randn(2, 2, 7, 4, generator=g), \
        torch.randn(2, 2, 7, 3, generator=g)
    for mask in (None, causal_mask(5, 7), torch.rand(2, 6, 5, 7, generator=g) > 0.5, torch.rand(7, generator=g) > 0.5):
        out, weights = grouped_query_attention(q, k, v, mask)
        ref, ref_weights = scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), mask)
        torch.testing.assert_close(out, ref, **FP32)
        torch.testing.assert_close(weights, ref_weights, **FP32)


def test_num_kv_heads_equal_to_num_heads_is_multi_head_attention_unchanged():
    """Same parameters in the same order from the same seed, the same state dict, the same outputs."""
    torch.manual_seed(0)
    before = MultiHeadAttention(16, 4)
    torch.manual_seed(0)
    after = MultiHeadAttention(16, 4, num_kv_heads=4)
    assert list(before.state_dict()) == ["W_q.weight", "W_q.bias", "W_k.weight", "W_k.bias", "W_v.weight",
                                         "W_v.bias", "W_o.weight", "W_o.bias"]
    for (name, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items()):
        assert a.shape == b.shape and torch.equal(a, b), name
    after.load_state_dict(before.state_dict(), strict=True)
    x = torch.randn(2, 5, 16)
    for need_weights in (True, False):
        assert torch.equal(before(x, x, x, causal_mask(5), need_weights)[0], after(x, x, x, causal_mask(5),
                                                                                    need_weights)[0])
    torch.manual_seed(0)
    lm_before = DecoderOnlyLM(13, 16, 4, 2, 32, 20)
    torch.manual_seed(0)
    lm_after = DecoderOnlyLM(13, 16, 4, 2, 32, 20, num_kv_heads=4)
    lm_after.load_state_dict(lm_before.state_dict(), strict=True)


def test_gqa_shrinks_the_cache_and_the_parameters():
    lm, mqa = _lm(), _lm(num_kv_heads=1)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(lm) - n(mqa) == 2 * 2 * (16 * 12 + 12)                      # 2 layers x (W_k, W_v) x 3 of 4 heads gone
    tokens = torch.randint(0, 13, (2, 9))
    caches = {}
    for name, model in (("mha", lm), ("mqa", mqa)):
        caches[name] = model.new_cache()
        model(tokens, cache=caches[name])
    assert sum(c.nbytes() for c in caches["mha"]) == 4 * sum(c.nbytes() for c in caches["mqa"])


# --------------------------------------------------------------------------------- memory arithmetic

def test_kv_cache_bytes_by_hand():
    llama7 = PUBLISHED_MODELS["Llama 2 7B"]
    # 2 (K and V) x 32 layers x 32 heads x 128 x 4096 positions x 2 bytes = 2^1 * 2^5 * 2^5 * 2^7 * 2^12 * 2^1 = 2^31
    assert kv_cache_bytes(llama7.num_layers, llama7.num_kv_heads, llama7.d_head, llama7.context) == 2 ** 31
    llama70 = PUBLISHED_MODELS["Llama 2 70B"]
    # 2 x 80 x 8 x 128 x 4096 x 2 = 1,342,177,280 bytes = 1.25 GiB; with 64 kv heads it would be 10 GiB
    assert kv_cache_bytes(80, llama70.num_kv_heads, 128, 4096) == 1_342_177_280 == 1.25 * 2 ** 30
    assert kv_cache_bytes(80, llama70.num_heads, 128, 4096) == 10 * 2 ** 30
    assert kv_cache_bytes(2, 3, 5, 7, batch_size=11, bytes_per_element=4) == 2 * 2 * 3 * 5 * 7 * 11 * 4


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_kv_cache_bytes_equals_a_filled_cache(num_kv_heads):
    lm = _lm(num_kv_heads)
    out = lm.greedy_generate(torch.randint(0, 13, (3, 4)), 6)          # 10 positions
    cache = lm.new_cache()
    lm(out, cache=cache)
    held = sum(c.nbytes() for c in cache)
    assert held == kv_cache_bytes(num_layers=2, num_kv_heads=num_kv_heads, d_head=4, seq_len=10, batch_size=3,
                                  bytes_per_element=4)


# ------------------------------------------------------------------------------------ argument errors

def test_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"num_kv_heads \(3\) must divide num_heads \(4\)"):
        MultiHeadAttention(16, 4, num_kv_heads=3)
    with pytest.raises(ValueError, match="num_kv_heads must be a positive int; got 0"):
        DecoderOnlyLM(13, 16, 4, 2, 32, 20, num_kv_heads=0)
    lm = _lm()
    tokens = torch.randint(0, 13, (2, 5))
    with pytest.raises(ValueError, match=r"cache must be a list of one cache per layer \(2, as new_cache\(\) makes\)"):
        lm(tokens, cache=lm.new_cache()[:1])
    cache = lm.new_cache()
    lm(tokens, cache=cache)
    with pytest.raises(ValueError, match="tokens must hold every token so far, the 5 the cache holds and at least one"):
        lm(tokens[:, -1:], cache=cache)
    with pytest.raises(ValueError, match=r"from position offset = 5 but the positional table has max_len = 48"):
        lm(torch.randint(0, 13, (2, 49)), cache=cache)
    with pytest.raises(ValueError, match=r"mask of shape \(6, 6\) does not broadcast to \(B, T_q, T_k\) = \(2, 1, 6\)"):
        lm(torch.randint(0, 13, (2, 6)), causal_mask(6), cache=cache)
    with pytest.raises(TypeError, match="cache must be a KVCache or None; got list"):
        EncoderLayer(16, 4, 32)(torch.randn(2, 3, 16), cache=[KVCache()])
    with pytest.raises(ValueError, match=r"query heads q.shape\[1\] = 6 must be a multiple of .* k.shape\[1\] = 4"):
        grouped_query_attention(torch.randn(1, 6, 2, 4), torch.randn(1, 4, 3, 4), torch.randn(1, 4, 3, 4))
    with pytest.raises(ValueError, match=r"v.shape\[1\] must equal H_kv"):
        grouped_query_attention(torch.randn(1, 6, 2, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 3, 3, 4))
    with pytest.raises(ValueError, match="steps must be a positive int"):
        lm.greedy_generate(tokens, 0)
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        kv_cache_bytes(0, 8, 128, 4096)


# ---------------------------------------------------------------------------------------------- CUDA

@pytest.mark.cuda
@cuda
def test_cached_decoding_bf16_cuda():
    """Under bf16 autocast the cached steps' logits stay within bf16 rounding of the full run's."""
    lm = _lm(2, device="cuda")
    tokens = torch.randint(0, 13, (4, 24), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        full = lm(tokens)
        cache = lm.new_cache()
        steps = [lm(tokens[:, :8], cache=cache)] + [lm(tokens[:, :t + 1], cache=cache) for t in range(8, 24)]
    torch.testing.assert_close(torch.cat(steps, 1).float(), full.float(), atol=5e-2, rtol=5e-2)

"""The fast path the models run by default against the explicit path the book teaches.

Fast: F.scaled_dot_product_attention (need_weights=False), LayerNorm through F.layer_norm.
Explicit: scaled_dot_product_attention written out (need_weights=True) and layer_norm written out.
They must agree, outputs and gradients, tightly in fp32 on the CPU and within bf16/fp16 rounding on
CUDA (the `cuda` tests, skipped without a GPU); fully masked query rows give zeros, never NaN, on both.
"""

from __future__ import annotations

import pytest
import torch

from transformer_ref import attention
from transformer_ref._checks import check_values
from transformer_ref.attention import fused_attention, scaled_dot_product_attention
from transformer_ref.bert import BertConfig, BertForMaskedLM
from transformer_ref.layers import LayerNorm, layer_norm
from transformer_ref.masks import causal_mask
from transformer_ref.model import DecoderOnlyLM, Transformer
from transformer_ref.multihead import MultiHeadAttention
from transformer_ref.vit import VisionTransformer

FP32 = dict(atol=2e-5, rtol=2e-5)
LOW = {torch.bfloat16: dict(atol=3e-2, rtol=3e-2), torch.float16: dict(atol=5e-3, rtol=5e-3)}

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _explicit_layer_norm(self: LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return layer_norm(x, self.weight, self.bias, self.eps)


def _masks(B: int, T: int, device: torch.device) -> dict[str, torch.Tensor | None]:
    """No mask, causal, key padding with one sequence all padding, and a 2-D mask with an empty row."""
    padding = torch.ones(B, 1, 1, T, dtype=torch.bool, device=device)
    padding[0, ..., T // 2:] = False
    padding[-1] = False                                              # every query of the last sequence: no key
    empty_row = causal_mask(T, device=device).clone()
    empty_row[1] = False
    return {"none": None, "causal": causal_mask(T, device=device), "padding": padding, "empty_row": empty_row}


def _attention_grads(fn, q, k, v):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(torch.randn_like(out, generator=None))
    return out.detach(), [t.grad for t in (q, k, v)]


def _compare_attention(device: torch.device, dtype: torch.dtype, tol: dict, T: int = 24) -> None:
    g = torch.Generator(device=device).manual_seed(0)
    B, H, d_k = 3, 2, 8
    q, k, v = (torch.randn(B, H, T, d_k, generator=g, device=device, dtype=dtype) for _ in range(3))
    for name, mask in _masks(B, T, device).items():
        torch.manual_seed(1)
        fast, fast_grads = _attention_grads(lambda a, b, c: fused_attention(a, b, c, mask), q, k, v)
        torch.manual_seed(1)
        slow, slow_grads = _attention_grads(lambda a, b, c: scaled_dot_product_attention(a, b, c, mask)[0], q, k, v)
        torch.testing.assert_close(fast, slow, **tol, msg=lambda m: f"mask {name}: {m}")
        for grad_fast, grad_slow in zip(fast_grads, slow_grads):
            assert torch.isfinite(grad_fast).all(), f"mask {name}: NaN or inf in the fast path's gradient"
            torch.testing.assert_close(grad_fast, grad_slow, **tol, msg=lambda m: f"mask {name}, grad: {m}")


def test_fused_attention_matches_explicit_with_gradients_cpu():
    _compare_attention(torch.device("cpu"), torch.float32, FP32)


def test_fully_masked_rows_give_zeros_not_nan_on_both_paths():
    q = k = v = torch.randn(2, 1, 5, 4, requires_grad=True)
    mask = torch.zeros(2, 1, 5, 5, dtype=torch.bool)
    mask[0, 0, :, :2] = True                                  # batch 0 sees two keys; batch 1 sees nothing
    mask[0, 0, 3] = False                                     # ... except query 3
    for output in (fused_attention(q, k, v, mask), scaled_dot_product_attention(q, k, v, mask)[0]):
        assert torch.isfinite(output).all()
        assert output[1].abs().max() == 0 and output[0, 0, 3].abs().max() == 0
        assert output[0, 0, 0].abs().max() > 0
        (grad,) = torch.autograd.grad(output.sum(), q)
        assert torch.isfinite(grad).all()


def test_multi_head_attention_fast_path_never_builds_the_weights(monkeypatch):
    """need_weights=False goes through the fused kernel: the explicit T x T path is never called."""
    mha = MultiHeadAttention(16, 4)
    x = torch.randn(2, 7, 16)
    expected, weights = mha(x, x, x, causal_mask(7), need_weights=True)
    assert weights.shape == (2, 4, 7, 7)

    def explicit_called(*args, **kwargs):
        raise AssertionError("the fast path called the explicit attention")

    monkeypatch.setattr("transformer_ref.multihead.scaled_dot_product_attention", explicit_called)
    output, weights = mha(x, x, x, causal_mask(7), need_weights=False)
    assert weights is None
    torch.testing.assert_close(output, expected, **FP32)


def test_layer_norm_module_matches_the_explicit_function_with_gradients():
    g = torch.Generator().manual_seed(0)
    ln = LayerNorm(32, eps=1e-12)
    with torch.no_grad():
        ln.weight.normal_(generator=g)
        ln.bias.normal_(generator=g)
    x = (3 * torch.randn(4, 9, 32, generator=g) + 1).requires_grad_()
    fast = ln(x)
    (gx_fast, gw_fast, gb_fast) = torch.autograd.grad(fast.pow(2).sum(), (x, ln.weight, ln.bias))
    slow = layer_norm(x, ln.weight, ln.bias, ln.eps)
    (gx_slow, gw_slow, gb_slow) = torch.autograd.grad(slow.pow(2).sum(), (x, ln.weight, ln.bias))
    torch.testing.assert_close(fast, slow, **FP32)
    for a, b in ((gx_fast, gx_slow), (gw_fast, gw_slow), (gb_fast, gb_slow)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _bert(device: torch.device) -> BertForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_len=16, dropout=0.0)
    return BertForMaskedLM(config).to(device)


def _vit(device: torch.device) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(16, 4, 3, 5, d_model=32, num_layers=2, num_heads=4, d_ff=64).to(device)


def _bert_loss(model: BertForMaskedLM, explicit: bool, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (3, 12), generator=g).to(device)
    attention_mask = torch.ones(3, 12, dtype=torch.long, device=device)
    attention_mask[1, 7:] = 0
    attention_mask[2] = 0                                     # a sequence of padding only
    if explicit:
        h = model.bert(ids, attention_mask=attention_mask, need_weights=True).last_hidden_state
        logits = model.mlm_head(h, model.bert.embeddings.word_embeddings.weight)
    else:
        logits = model(ids, attention_mask=attention_mask)
    return logits.float().logsumexp(-1).mean()


def _vit_loss(model: VisionTransformer, explicit: bool, device: torch.device) -> torch.Tensor:
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(device)
    logits = model(images, need_weights=True)[0] if explicit else model(images)
    return logits.float().logsumexp(-1).mean()


def _model_grads(build, loss_fn, device, explicit, monkeypatch, dtype=None):
    model = build(device)
    with monkeypatch.context() as patch:
        if explicit:
            patch.setattr(LayerNorm, "forward", _explicit_layer_norm)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = loss_fn(model, explicit, device)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("build, loss_fn", [(_bert, _bert_loss), (_vit, _vit_loss)], ids=["bert", "vit"])
def test_model_fast_path_matches_explicit_path_cpu(build, loss_fn, monkeypatch):
    """The whole model, loss and every parameter's gradient: fused attention + F.layer_norm (the default)
    against explicit attention + the written-out layer_norm."""
    device = torch.device("cpu")
    loss_fast, grads_fast = _model_grads(build, loss_fn, device, False, monkeypatch)
    loss_slow, grads_slow = _model_grads(build, loss_fn, device, True, monkeypatch)
    torch.testing.assert_close(loss_fast, loss_slow, **FP32)
    assert grads_fast.keys() == grads_slow.keys() and len(grads_fast) > 10
    for name in grads_fast:
        assert torch.isfinite(grads_fast[name]).all(), name
        torch.testing.assert_close(grads_fast[name], grads_slow[name], atol=1e-4, rtol=1e-3,
                                   msg=lambda m: f"{name}: {m}")


def test_decoder_models_fast_path_matches_explicit_path():
    torch.manual_seed(0)
    lm = DecoderOnlyLM(11, d_model=16, num_heads=2, num_layers=2, d_ff=32, max_len=10)
    tokens = torch.randint(0, 11, (3, 8))
    x = lm.embedding(tokens)
    mask = causal_mask(8)
    torch.testing.assert_close(lm.blocks(x, mask), lm.blocks(x, mask, need_weights=True)[0], **FP32)
    model = Transformer(11, 11, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, d_ff=32,
                        dropout=0.0, max_len=10).eval()
    src, tgt = torch.randint(1, 11, (2, 6)), torch.randint(1, 11, (2, 5))
    src[1, 3:] = 0
    memory = model.encode(src)
    y = model.tgt_embedding(tgt)
    from transformer_ref.masks import decoder_self_attention_mask, padding_mask
    args = (y, memory, decoder_self_attention_mask(tgt, 0), padding_mask(src, 0))
    torch.testing.assert_close(model.decoder(*args), model.decoder(*args, need_weights=True)[0], **FP32)


def test_check_values_raises_on_the_cpu():
    check_values(torch.tensor(True), "never shown")
    with pytest.raises(ValueError, match="tokens out of range"):
        check_values(torch.tensor(False), "tokens out of range")


def test_fast_path_is_what_the_models_run_by_default(monkeypatch):
    """BertForMaskedLM and VisionTransformer call the fused kernel and F.layer_norm, not the explicit code."""
    calls = {"sdpa": 0}
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls["sdpa"] += 1
        return real(*args, **kwargs)

    def explicit_called(*args, **kwargs):
        raise AssertionError("the default path called explicit code")

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", counting)
    monkeypatch.setattr("transformer_ref.multihead.scaled_dot_product_attention", explicit_called)
    monkeypatch.setattr("transformer_ref.layers.layer_norm", explicit_called)
    _bert(torch.device("cpu"))(torch.randint(0, 50, (2, 5)))
    _vit(torch.device("cpu"))(torch.randn(2, 3, 16, 16))
    assert calls["sdpa"] == 4                                 # two layers each


# --- CUDA: bf16 / fp16, no GPU-to-CPU syncs -------------------------------------------------------

@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_attention_matches_explicit_cuda(dtype):
    _compare_attention(torch.device("cuda"), dtype, LOW[dtype], T=64)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("build, loss_fn", [(_bert, _bert_loss), (_vit, _vit_loss)], ids=["bert", "vit"])
def test_model_fast_path_matches_explicit_path_cuda_bf16(build, loss_fn, monkeypatch):
    device = torch.device("cuda")
    loss_fast, grads_fast = _model_grads(build, loss_fn, device, False, monkeypatch, torch.bfloat16)
    loss_slow, grads_slow = _model_grads(build, loss_fn, device, True, monkeypatch, torch.bfloat16)
    torch.testing.assert_close(loss_fast, loss_slow, **LOW[torch.bfloat16])
    for name in grads_fast:
        assert torch.isfinite(grads_fast[name]).all(), name
        scale = grads_slow[name].abs().max().clamp_min(1e-3)
        torch.testing.assert_close(grads_fast[name] / scale, grads_slow[name] / scale, atol=5e-2, rtol=5e-2,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.cuda
@cuda
def test_training_step_does_not_sync_cuda():
    """No .item() or data-dependent Python branch in the forward pass: sync debug mode "error" raises on any."""
    device = torch.device("cuda")
    bert = _bert(device)
    ids = torch.randint(1, 50, (2, 12), device=device)
    attention_mask = torch.ones(2, 12, dtype=torch.long, device=device)
    model = Transformer(11, 11, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, d_ff=32,
                        max_len=10).to(device)
    src, tgt = torch.randint(1, 11, (2, 6), device=device), torch.randint(1, 11, (2, 5), device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        bert(ids, attention_mask=attention_mask)
        model(src, tgt)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
@cuda
def test_fused_attention_memory_is_linear_in_T_cuda():
    """At T = 8192 the explicit weights alone would take B*H*T*T*2 bytes; the fused path stays far below."""
    device, dtype = torch.device("cuda"), torch.bfloat16
    B, H, T, d_k = 1, 4, 8192, 64
    q, k, v = (torch.randn(B, H, T, d_k, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fused_attention(q, k, v).sum().backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < B * H * T * T * 2 / 4


def test_broadcasts_to_agrees_with_torch_broadcast_shapes():
    """check_mask's plain-Python broadcast test (torch.broadcast_shapes costs ~0.1 ms per layer and step)."""
    import itertools

    from transformer_ref._checks import broadcasts_to
    shapes = [s for n in range(4) for s in itertools.product([0, 1, 2, 3], repeat=n)]
    targets = [s for n in range(4) for s in itertools.product([0, 1, 3], repeat=n)]
    for shape, target in itertools.product(shapes, targets):
        try:
            expected = torch.broadcast_shapes(shape, target) == torch.Size(target)
        except RuntimeError:
            expected = False
        assert broadcasts_to(shape, target) == expected, (shape, target)


def test_value_checks_become_device_assertions_when_compiling(monkeypatch):
    """The branch a GPU (or torch.compile) takes: no Python bool of a tensor, an async assertion instead.
    On the CPU torch._assert_async fires at once, so the branch is testable here."""
    from transformer_ref.model import TokenEmbedding
    embedding = TokenEmbedding(vocab_size=5, d_model=4, max_len=8)
    bad = torch.tensor([[1, 7]])
    with pytest.raises(ValueError, match=r"tokens must hold token ids in \[0, vocab_size = 5\); got values in \[1, 7\]"):
        embedding(bad)                                        # eager CPU: the full message with the range found
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("item() called: a GPU sync"))
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda self: pytest.fail("bool(tensor) called: a GPU sync"))
    with pytest.raises(RuntimeError, match=r"tokens must hold token ids in \[0, vocab_size = 5\)"):
        embedding(bad)
    embedding(torch.tensor([[1, 4]]))
    bert = _bert(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="attention_mask must hold 1"):
        bert(torch.tensor([[1, 2]]), attention_mask=torch.tensor([[1, 2]]))

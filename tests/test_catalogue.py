"""Every graded item of every assignment: catalogued mistakes fail with their diagnostic, valid
alternatives pass, and calling the shortcut fails with the shortcut message.

The alternatives are written the way a student might (einsum, loops, other formulas, other
random processes); none of them is the reference's code.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer_ref import testing
from transformer_ref.mistakes import CATALOGUE

# ---------------------------------------------------------------- valid alternatives, per item


def _softmax_masked(scores, mask):
    """-inf filling, then NaN rows (fully masked) -> 0: another correct way to mask."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)


def rnn_einsum(x, h0, W_xh, W_hh, b_h):
    h = torch.zeros(x.size(0), W_xh.size(1), dtype=x.dtype, device=x.device) if h0 is None else h0
    xs = torch.einsum("btd,dh->bth", x, W_xh)
    outs = torch.empty(x.size(0), x.size(1), W_xh.size(1), dtype=x.dtype, device=x.device)
    for t in range(x.size(1)):
        h = torch.tanh(xs[:, t] + torch.einsum("bh,hk->bk", h, W_hh) + b_h)
        outs[:, t] = h
    return outs, h


def rnn_unbind(x, h0, W_xh, W_hh, b_h):
    h = x.new_zeros(x.size(0), W_hh.size(0)) if h0 is None else h0
    states = []
    for x_t in x.unbind(1):
        h = torch.tanh(torch.addmm(b_h, x_t, W_xh) + h @ W_hh)
        states.append(h)
    return torch.stack(states, 1), states[-1]


def rnn_float64_inside(x, h0, W_xh, W_hh, b_h):
    out, h = rnn_einsum(x.double(), None if h0 is None else h0.double(), W_xh.double(), W_hh.double(), b_h.double())
    return out.to(x.dtype), h.to(x.dtype)


def additive_einsum(query, keys, values, W_q, W_k, w_v, mask=None):
    scores = torch.einsum("bta,a->bt", torch.tanh((query @ W_q)[:, None] + torch.einsum("btk,ka->bta", keys, W_k)), w_v)
    weights = _softmax_masked(scores, mask)
    return torch.einsum("bt,btv->bv", weights, values), weights


def additive_loop(query, keys, values, W_q, W_k, w_v, mask=None):
    contexts, all_weights = [], []
    for b in range(query.size(0)):
        scores = torch.stack([torch.tanh(query[b] @ W_q + keys[b, j] @ W_k) @ w_v for j in range(keys.size(1))])
        allowed = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask[b]
        if allowed.any():
            w = torch.zeros_like(scores)
            w[allowed] = torch.softmax(scores[allowed], dim=0)
        else:
            w = torch.zeros_like(scores)
        all_weights.append(w)
        contexts.append(w @ values[b])
    return torch.stack(contexts), torch.stack(all_weights)


def additive_large_negative(query, keys, values, W_q, W_k, w_v, mask=None):
    scores = torch.tanh((query @ W_q).unsqueeze(1) + keys @ W_k) @ w_v
    if mask is not None:
        scores = torch.where(mask, scores, torch.full_like(scores, -1e30 if scores.dtype == torch.float32 else -1e300))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights * mask
    return (weights.unsqueeze(-1) * values).sum(1), weights


def _additive_module(fn):
    class Additive(nn.Module):
        def __init__(self, query_dim, key_dim, attn_dim):
            super().__init__()
            self.W_q = nn.Linear(query_dim, attn_dim, bias=False)
            self.W_k = nn.Linear(key_dim, attn_dim, bias=False)
            self.w_v = nn.Parameter(torch.zeros(attn_dim))

        def forward(self, query, keys, values, mask=None):
            return fn(query, keys, values, self.W_q.weight.t(), self.W_k.weight.t(), self.w_v, mask)
    return Additive


def pe_exp_log(max_len, d_model):  # the PyTorch tutorial's version, in float32 throughout
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def pe_loops(max_len, d_model):
    return torch.tensor([[math.sin(pos / 10000 ** (j / d_model)) if j % 2 == 0 else
                          math.cos(pos / 10000 ** ((j - 1) / d_model)) for j in range(d_model)]
                         for pos in range(max_len)], dtype=torch.float32)


def pe_stack(max_len, d_model):
    angle = torch.arange(max_len, dtype=torch.float64)[:, None] / 10000 ** (
        torch.arange(d_model // 2, dtype=torch.float64) * 2 / d_model)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1).float()


def rel_index_loops(q_len, k_len, max_distance):
    return torch.tensor([[min(max(j - i, -max_distance), max_distance) + max_distance for j in range(k_len)]
                         for i in range(q_len)], dtype=torch.long)


def rel_index_clip_after_shift(q_len, k_len, max_distance):
    d = torch.arange(k_len)[None] - torch.arange(q_len)[:, None] + max_distance
    return torch.clip(d, 0, 2 * max_distance)


def rel_index_minimum(q_len, k_len, max_distance):
    j, i = torch.meshgrid(torch.arange(k_len), torch.arange(q_len), indexing="xy")
    return torch.minimum(torch.maximum(j - i, torch.tensor(-max_distance)), torch.tensor(max_distance)) + max_distance


def rel_attention_einsum(q, k, v, rel_k, rel_v, mask=None):
    scores = (torch.einsum("...id,...jd->...ij", q, k) + torch.einsum("...id,ijd->...ij", q, rel_k)) / q.size(-1) ** 0.5
    w = _softmax_masked(scores, mask)
    return torch.einsum("...ij,...jd->...id", w, v) + torch.einsum("...ij,ijd->...id", w, rel_v), w


def rel_attention_broadcast(q, k, v, rel_k, rel_v, mask=None):
    keys = k.unsqueeze(-3) + rel_k  # (..., T_q, T_k, d_k)
    scores = (q.unsqueeze(-2) * keys).sum(-1) / math.sqrt(q.size(-1))
    w = _softmax_masked(scores, mask)
    return (w.unsqueeze(-1) * (v.unsqueeze(-3) + rel_v)).sum(-2), w


def rel_attention_float64(q, k, v, rel_k, rel_v, mask=None):
    out, w = rel_attention_einsum(q.double(), k.double(), v.double(), rel_k.double(), rel_v.double(), mask)
    return out.to(q.dtype), w.to(q.dtype)


def dpa_einsum(x):
    w = torch.softmax(torch.einsum("...id,...jd->...ij", x, x), dim=-1)
    return torch.einsum("...ij,...jd->...id", w, x), w


def dpa_exp(x):
    s = x @ x.mT
    e = torch.exp(s - s.amax(-1, keepdim=True))
    w = e / e.sum(-1, keepdim=True)
    return w @ x, w


def dpa_matmul(x):
    w = F.softmax(torch.matmul(x, x.transpose(-1, -2)), -1)
    return torch.matmul(w, x), w


def sdpa_einsum(q, k, v, mask=None):
    w = _softmax_masked(torch.einsum("...qd,...kd->...qk", q, k) / math.sqrt(q.shape[-1]), mask)
    return torch.einsum("...qk,...kd->...qd", w, v), w


def sdpa_scale_first(q, k, v, mask=None):
    scores = (q / q.size(-1) ** 0.5) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(mask.logical_not(), -torch.inf)
    w = torch.softmax(scores, -1)
    w = torch.where(torch.isnan(w), torch.zeros_like(w), w)
    return w @ v, w


def sdpa_float64_inside(q, k, v, mask=None):
    out, w = sdpa_einsum(q.double(), k.double(), v.double(), mask)
    return out.to(q.dtype), w.to(q.dtype)


def self_attention_einsum(x, W_q, W_k, W_v, mask=None):
    q, k, v = (torch.einsum("btd,de->bte", x, W) for W in (W_q, W_k, W_v))
    return sdpa_einsum(q, k, v, mask)


def self_attention_fused_qkv(x, W_q, W_k, W_v, mask=None):
    d_k = W_q.size(1)
    qkv = x @ torch.cat([W_q, W_k, W_v], dim=1)
    return sdpa_scale_first(qkv[..., :d_k], qkv[..., d_k:2 * d_k], qkv[..., 2 * d_k:], mask)


def self_attention_loop(x, W_q, W_k, W_v, mask=None):
    outs = [sdpa_einsum(x[b] @ W_q, x[b] @ W_k, x[b] @ W_v, None if mask is None else mask[b] if mask.dim() == 3
                        else mask) for b in range(x.size(0))]
    return torch.stack([o for o, _ in outs]), torch.stack([w for _, w in outs])


def split_permute(x, num_heads):
    B, T, d = x.shape
    return x.reshape(B, T, num_heads, d // num_heads).permute(0, 2, 1, 3)


def split_chunks(x, num_heads):
    return torch.stack(x.chunk(num_heads, dim=-1), dim=1)


def split_loop(x, num_heads):
    d_k = x.size(-1) // num_heads
    return torch.stack([x[..., h * d_k:(h + 1) * d_k] for h in range(num_heads)], dim=1).contiguous()


def merge_permute(x):
    B, H, T, d_k = x.shape
    return x.permute(0, 2, 1, 3).contiguous().view(B, T, H * d_k)


def merge_cat(x):
    return torch.cat(x.unbind(1), dim=-1)


def merge_einsum(x):
    B, H, T, d_k = x.shape
    return torch.einsum("bhtd->bthd", x).reshape(B, T, H * d_k)


class MHAPerHead(nn.Module):
    """One head at a time, slicing the projections' weights."""

    def __init__(self, d_model, num_heads):
        super().__init__()
        self.h = num_heads
        self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, query, key, value, mask=None):
        d_k = query.size(-1) // self.h
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]
        q, k, v = self.W_q(query), self.W_k(key), self.W_v(value)
        heads, weights = [], []
        for h in range(self.h):
            sl = slice(h * d_k, (h + 1) * d_k)
            m = None if mask is None else mask[:, min(h, mask.size(1) - 1)] if mask.dim() == 4 else mask
            o, w = sdpa_einsum(q[..., sl], k[..., sl], v[..., sl], m)
            heads.append(o)
            weights.append(w)
        return self.W_o(torch.cat(heads, -1)), torch.stack(weights, 1)


class MHAEinsum(nn.Module):
    def __init__(self, d_model, num_heads):
        super().__init__()
        self.h = num_heads
        self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, query, key, value, mask=None):
        q, k, v = (split_chunks(lin(x), self.h) for lin, x in ((self.W_q, query), (self.W_k, key), (self.W_v, value)))
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)
        out, w = sdpa_scale_first(q, k, v, mask)
        return self.W_o(merge_cat(out)), w


class MHAFloat64(MHAEinsum):
    def forward(self, query, key, value, mask=None):
        dtype = query.dtype
        self.double()
        out, w = super().forward(query.double(), key.double(), value.double(), mask)
        self.to(dtype)
        return out.to(dtype), w.to(dtype)


def causal_arange(T_q, T_k=None, device=None):
    T_k = T_q if T_k is None else T_k
    i = torch.arange(T_q, device=device)[:, None]
    j = torch.arange(T_k, device=device)[None]
    return j <= i + (T_k - T_q)


def causal_triu(T_q, T_k=None, device=None):
    T_k = T_k or T_q
    return ~torch.triu(torch.ones(T_q, T_k, dtype=torch.bool, device=device), diagonal=T_k - T_q + 1)


def causal_loops(T_q, T_k=None, device=None):
    T_k = T_k or T_q
    return torch.tensor([[j <= i + T_k - T_q for j in range(T_k)] for i in range(T_q)], device=device)


def padding_ne(tokens, pad_id):
    return tokens.ne(pad_id)[:, None, :]


def padding_view(tokens, pad_id):
    return (tokens != pad_id).view(tokens.size(0), 1, tokens.size(1))


def padding_logical_not(tokens, pad_id):
    return torch.logical_not(tokens == pad_id).unsqueeze(-2)


def decoder_mask_and(tokens, pad_id):
    T = tokens.size(1)
    return (tokens != pad_id)[:, None, :] & causal_arange(T, device=tokens.device)


def decoder_mask_loops(tokens, pad_id):
    B, T = tokens.shape
    return torch.tensor([[[j <= i and tokens[b, j].item() != pad_id for j in range(T)] for i in range(T)]
                         for b in range(B)], device=tokens.device)


def decoder_mask_logical(tokens, pad_id):
    causal = torch.tril(torch.ones(tokens.size(1), tokens.size(1), device=tokens.device)).bool()
    return torch.logical_and(padding_view(tokens, pad_id).expand(-1, tokens.size(1), -1), causal)


def ln_var_mean(x, gamma, beta, eps=1e-5):
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, unbiased=False)
    return (x - mean) * torch.rsqrt(var + eps) * gamma + beta


def ln_moments(x, gamma, beta, eps=1e-5):
    mean = x.sum(-1, keepdim=True) / x.size(-1)
    centred = x - mean
    return gamma * centred / (centred.pow(2).sum(-1, keepdim=True) / x.size(-1) + eps).sqrt() + beta


def ln_float64(x, gamma, beta, eps=1e-5):
    return ln_var_mean(x.double(), gamma.double(), beta.double(), eps).to(x.dtype)


class OwnLayerNorm(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x):
        return ln_moments(x, self.weight, self.bias, self.eps)


class AddNormOwnNorm(nn.Module):
    def __init__(self, d_model, dropout=0.0):
        super().__init__()
        self.norm = OwnLayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, sublayer_out):
        return self.norm(self.dropout(sublayer_out) + x)


class AddNormFunctionalDropout(nn.Module):
    def __init__(self, d_model, dropout=0.0):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.p = dropout

    def forward(self, x, sublayer_out):
        return self.norm(x + F.dropout(sublayer_out, self.p, self.training))


class AddNormTorchLN(nn.Module):
    def __init__(self, d_model, dropout=0.0):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=1e-5)
        self.drop = nn.Dropout(p=dropout)

    def forward(self, x, sublayer_out):
        residual = x + self.drop(sublayer_out)
        return self.norm(residual)


class FFNClamp(nn.Module):
    def __init__(self, d_model, d_ff, dropout=0.0):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)

    def forward(self, x):
        return self.linear2(self.linear1(x).clamp(min=0))


class FFNFunctional(FFNClamp):
    def forward(self, x):
        h = F.relu(F.linear(x, self.linear1.weight, self.linear1.bias))
        return F.linear(h, self.linear2.weight, self.linear2.bias)


class FFNEinsum(FFNClamp):
    def forward(self, x):
        h = torch.relu(torch.einsum("...d,fd->...f", x, self.linear1.weight) + self.linear1.bias)
        return torch.einsum("...f,df->...d", h, self.linear2.weight) + self.linear2.bias


def mask_tokens_bernoulli(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                          generator=None):
    """The Hugging Face collator's process: nested Bernoulli draws (statistically the same)."""
    full = torch.full(input_ids.shape, mlm_probability)
    special = torch.zeros(input_ids.shape, dtype=torch.bool)
    for s in special_token_ids:
        special |= input_ids == s
    chosen = torch.bernoulli(full.masked_fill(special, 0.0), generator=generator).bool()
    labels = input_ids.clone()
    labels[~chosen] = -100
    inputs = input_ids.clone()
    replaced = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & chosen
    inputs[replaced] = mask_token_id
    randomised = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool() & chosen & ~replaced
    words = torch.randint(vocab_size, input_ids.shape, dtype=input_ids.dtype, generator=generator)
    inputs[randomised] = words[randomised]
    return inputs, labels


def mask_tokens_uniform(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                        generator=None):
    u = torch.rand(input_ids.shape, generator=generator)
    special = torch.isin(input_ids, torch.as_tensor(special_token_ids, dtype=input_ids.dtype))
    chosen = (u < mlm_probability) & ~special
    # one number decides the action: its position inside [0, p) tells mask / random / keep
    action = u / max(mlm_probability, 1e-12)
    rand_ids = torch.randint(0, vocab_size, input_ids.shape, generator=generator).to(input_ids.dtype)
    inputs = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), rand_ids, inputs)
    return inputs, torch.where(chosen, input_ids, torch.full_like(input_ids, -100))


def mask_tokens_rows(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                     generator=None):
    """One row at a time, three uniform draws per token."""
    inputs, labels = input_ids.clone(), torch.full_like(input_ids, -100)
    special = torch.tensor(special_token_ids, dtype=input_ids.dtype)
    for row in range(input_ids.size(0)):
        ids = input_ids[row]
        u, a = torch.rand(2, ids.numel(), generator=generator)
        r = (torch.rand(ids.numel(), generator=generator) * vocab_size).long().clamp(max=vocab_size - 1)
        chosen = (u < mlm_probability) & ~torch.isin(ids, special)
        labels[row][chosen] = ids[chosen]
        inputs[row][chosen & (a < 0.8)] = mask_token_id
        randomised = chosen & (a >= 0.8) & (a < 0.9)
        inputs[row][randomised] = r[randomised].to(ids.dtype)
    return inputs, labels


class BertEmbeddingsOwn(nn.Module):
    def __init__(self, vocab_size, d_model, max_len, type_vocab_size):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, d_model)
        self.position_embeddings = nn.Embedding(max_len, d_model)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, d_model)
        self.norm = OwnLayerNorm(d_model, eps=1e-12)

    def forward(self, input_ids, token_type_ids=None):
        segments = 0 if token_type_ids is None else self.token_type_embeddings(token_type_ids)
        if token_type_ids is None:
            segments = self.token_type_embeddings.weight[0]
        positions = self.position_embeddings.weight[: input_ids.size(1)]
        return self.norm(self.word_embeddings(input_ids) + positions + segments)


class BertEmbeddingsIndexing(BertEmbeddingsOwn):
    def forward(self, input_ids, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = input_ids.new_zeros(input_ids.shape)
        x = self.word_embeddings.weight[input_ids] + self.token_type_embeddings.weight[token_type_ids]
        x = x + self.position_embeddings(torch.arange(input_ids.shape[1], device=input_ids.device))[None]
        return F.layer_norm(x, x.shape[-1:], self.norm.weight, self.norm.bias, 1e-12)


class BertEmbeddingsTorchLN(BertEmbeddingsOwn):
    def __init__(self, vocab_size, d_model, max_len, type_vocab_size):
        super().__init__(vocab_size, d_model, max_len, type_vocab_size)
        self.norm = nn.LayerNorm(d_model, eps=1e-12)


def mlm_logsumexp(logits, labels):
    used = labels != -100
    chosen_logits = logits[used]  # (n, vocab)
    return (torch.logsumexp(chosen_logits, -1) - chosen_logits.gather(1, labels[used][:, None]).squeeze(1)).mean()


def mlm_loop(logits, labels):
    flat_logits, flat_labels = logits.reshape(-1, logits.size(-1)), labels.reshape(-1)
    terms = [-torch.log_softmax(flat_logits[n], 0)[flat_labels[n]] for n in range(flat_labels.numel())
             if flat_labels[n] != -100]
    return torch.stack(terms).mean()


def mlm_one_hot(logits, labels):
    used = labels != -100
    one_hot = F.one_hot(labels.clamp(min=0), logits.size(-1)).to(logits.dtype)
    nll = -(one_hot * logits.log_softmax(-1)).sum(-1)
    return nll[used].sum() / used.sum()


def patchify_unfold(images, patch_size):
    return F.unfold(images, kernel_size=patch_size, stride=patch_size).transpose(1, 2)


def patchify_loops(images, patch_size):
    B, C, H, W = images.shape
    P = patch_size
    return torch.stack([images[:, :, r:r + P, c:c + P].reshape(B, -1)
                        for r in range(0, H, P) for c in range(0, W, P)], dim=1)


def patchify_unfold_tensor(images, patch_size):
    B, C = images.shape[:2]
    x = images.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)  # (B, C, H/P, W/P, P, P)
    return x.permute(0, 2, 3, 1, 4, 5).reshape(B, -1, C * patch_size ** 2)


def unpatchify_fold(patches, patch_size, height, width):
    return F.fold(patches.transpose(1, 2), (height, width), kernel_size=patch_size, stride=patch_size)


def unpatchify_loops(patches, patch_size, height, width):
    B, N, D = patches.shape
    P = patch_size
    C = D // (P * P)
    out = patches.new_empty(B, C, height, width)
    n = 0
    for r in range(0, height, P):
        for c in range(0, width, P):
            out[:, :, r:r + P, c:c + P] = patches[:, n].reshape(B, C, P, P)
            n += 1
    return out


def unpatchify_einsum(patches, patch_size, height, width):
    B, N, D = patches.shape
    P = patch_size
    x = patches.reshape(B, height // P, width // P, D // (P * P), P, P)
    return torch.einsum("bhwcpq->bchpwq", x).reshape(B, -1, height, width)


def _patch_embedding(embed_patches):
    class PatchEmbed(nn.Module):
        def __init__(self, image_size, patch_size, in_channels, d_model):
            super().__init__()
            H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
            self.P = patch_size
            self.proj = nn.Linear(in_channels * patch_size ** 2, d_model)
            self.cls_token = nn.Parameter(torch.randn(1, 1, d_model))
            self.pos_embedding = nn.Parameter(torch.randn(1, H * W // patch_size ** 2 + 1, d_model))

        def forward(self, images):
            x = embed_patches(self, images)
            return torch.cat([self.cls_token.expand(len(x), 1, -1), x], 1) + self.pos_embedding
    return PatchEmbed


PatchEmbeddingLinear = _patch_embedding(lambda self, images: self.proj(patchify_unfold(images, self.P)))
PatchEmbeddingConv = _patch_embedding(lambda self, images: F.conv2d(
    images, self.proj.weight.view(-1, images.size(1), self.P, self.P), self.proj.bias, stride=self.P
).flatten(2).transpose(1, 2))
PatchEmbeddingLoops = _patch_embedding(lambda self, images: self.proj(patchify_loops(images, self.P)))


def noam_sqrt(step, d_model, warmup_steps):
    return 0.0 if step == 0 else min(1 / math.sqrt(step), step / warmup_steps ** 1.5) / math.sqrt(d_model)


def noam_branches(step, d_model, warmup_steps):
    if step == 0:
        return 0.0
    if step < warmup_steps:
        return step * warmup_steps ** -1.5 * d_model ** -0.5
    return (d_model * step) ** -0.5


def noam_tensor(step, d_model, warmup_steps):
    s = torch.tensor(float(step), dtype=torch.float64)
    return float(torch.where(s == 0, 0.0, d_model ** -0.5 * torch.minimum(s.rsqrt(), s * warmup_steps ** -1.5)))


def _progress(step, warmup_steps, total_steps):
    return max(0.0, min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))


def linear_branches(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return step / warmup_steps * base_lr
    if step >= total_steps:
        return min_lr
    return base_lr - (base_lr - min_lr) * (step - warmup_steps) / (total_steps - warmup_steps)


def linear_factor(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    warm = min(1.0, step / warmup_steps)
    return min_lr + (warm * base_lr - min_lr) * (1 - _progress(step, warmup_steps, total_steps)) \
        if step >= warmup_steps else warm * base_lr


def linear_interp(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    if step <= warmup_steps:
        return base_lr * step / warmup_steps
    p = _progress(step, warmup_steps, total_steps)
    return (1 - p) * base_lr + p * min_lr


def cosine_branches(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * _progress(step, warmup_steps, total_steps)))


def cosine_squared(step, base_lr, warmup_steps, total_steps, min_lr=0.0):  # (1 + cos x) / 2 = cos^2(x / 2)
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return min_lr + (base_lr - min_lr) * math.cos(math.pi * _progress(step, warmup_steps, total_steps) / 2) ** 2


def cosine_torch(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    p = torch.tensor(_progress(step, warmup_steps, total_steps), dtype=torch.float64)
    return float(min_lr + (base_lr - min_lr) * (1 + torch.cos(torch.pi * p)) / 2)


def _blocks():
    from transformer_ref.layers import LayerNorm, PositionwiseFeedForward
    from transformer_ref.multihead import MultiHeadAttention
    return MultiHeadAttention, PositionwiseFeedForward, LayerNorm


class EncoderLayerRef(nn.Module):
    """With the package's LayerNorm and an explicit residual helper."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
        super().__init__()
        MHA, FFN, LN = _blocks()
        self.self_attn, self.feed_forward = MHA(d_model, num_heads), FFN(d_model, d_ff)
        self.norm1, self.norm2 = LN(d_model), LN(d_model)

    def forward(self, x, mask=None):
        h = self.norm1(x + self.self_attn(x, x, x, mask)[0])
        return self.norm2(h + self.feed_forward(h))


class EncoderLayerTorchLN(EncoderLayerRef):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
        super().__init__(d_model, num_heads, d_ff)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, x, mask=None):
        for norm, sublayer in ((self.norm1, lambda y: self.self_attn(y, y, y, mask=mask)[0]),
                               (self.norm2, self.feed_forward)):
            x = norm(x + sublayer(x))
        return x


class EncoderLayerFused(EncoderLayerRef):
    def forward(self, x, mask=None):
        h = self.norm1(x + self.self_attn(x, x, x, mask, need_weights=False)[0])
        return self.norm2(h + self.feed_forward(h))


def _decoder_layer(norm_cls, need_weights=True):
    class Layer(nn.Module):
        def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
            super().__init__()
            MHA, FFN, _ = _blocks()
            self.self_attn, self.cross_attn = MHA(d_model, num_heads), MHA(d_model, num_heads)
            self.feed_forward = FFN(d_model, d_ff)
            self.norm1, self.norm2, self.norm3 = norm_cls(d_model), norm_cls(d_model), norm_cls(d_model)

        def forward(self, x, memory, self_mask=None, memory_mask=None):
            for attn, norm, kv, mask in ((self.self_attn, self.norm1, None, self_mask),
                                         (self.cross_attn, self.norm2, memory, memory_mask)):
                source = x if kv is None else kv
                x = norm(x + attn(x, source, source, mask, need_weights=need_weights)[0])
            return self.norm3(x + self.feed_forward(x))
    return Layer


DecoderLayerLoop = _decoder_layer(lambda d: _blocks()[2](d))
DecoderLayerTorchLN = _decoder_layer(nn.LayerNorm)
DecoderLayerFused = _decoder_layer(nn.LayerNorm, need_weights=False)


@torch.no_grad()
def greedy_lists(model, src, bos_id, eos_id, max_len):
    memory = model.encode(src)
    out = [[bos_id] for _ in range(src.size(0))]
    done = [False] * src.size(0)
    while len(out[0]) < max_len and not all(done):
        logits = model.decode(torch.tensor(out, device=src.device), memory, src)
        nxt = logits[:, -1].argmax(-1).tolist()
        for b in range(len(out)):
            out[b].append(model.pad_id if done[b] else nxt[b])
            done[b] = done[b] or nxt[b] == eos_id
    return torch.tensor(out, dtype=torch.long, device=src.device)


@torch.no_grad()
def greedy_prealloc(model, src, bos_id, eos_id, max_len):
    memory = model.encode(src)
    tokens = torch.full((src.size(0), max_len), model.pad_id, dtype=torch.long, device=src.device)
    tokens[:, 0] = bos_id
    alive = torch.ones(src.size(0), dtype=torch.bool, device=src.device)
    for t in range(1, max_len):
        nxt = model.decode(tokens[:, :t], memory, src)[:, t - 1].max(-1).indices
        tokens[:, t] = torch.where(alive, nxt, model.pad_id)
        alive &= nxt != eos_id
        if not alive.any():
            return tokens[:, :t + 1]
    return tokens


@torch.no_grad()
def greedy_forward(model, src, bos_id, eos_id, max_len):
    """Re-encodes at every step through model(src, tgt): slower, same tokens."""
    tokens = torch.full((src.size(0), 1), bos_id, device=src.device)
    finished = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    for _ in range(max_len - 1):
        nxt = model(src, tokens)[:, -1].argmax(-1)
        nxt[finished] = model.pad_id
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        finished = finished | (nxt == eos_id)
        if bool(finished.all()):
            break
    return tokens


ALTERNATIVES = {
    "rnn_forward": [rnn_einsum, rnn_unbind, rnn_float64_inside],
    "additive_attention": [additive_einsum, additive_loop, additive_large_negative],
    "AdditiveAttention": [_additive_module(additive_einsum), _additive_module(additive_loop)],
    "sinusoidal_positional_encoding": [pe_exp_log, pe_loops, pe_stack],
    "relative_position_index": [rel_index_loops, rel_index_clip_after_shift, rel_index_minimum],
    "relative_attention": [rel_attention_einsum, rel_attention_broadcast, rel_attention_float64],
    "dot_product_attention": [dpa_einsum, dpa_exp, dpa_matmul],
    "scaled_dot_product_attention": [sdpa_einsum, sdpa_scale_first, sdpa_float64_inside],
    "self_attention": [self_attention_einsum, self_attention_fused_qkv, self_attention_loop],
    "split_heads": [split_permute, split_chunks, split_loop],
    "merge_heads": [merge_permute, merge_cat, merge_einsum],
    "MultiHeadAttention": [MHAPerHead, MHAEinsum, MHAFloat64],
    "causal_mask": [causal_arange, causal_triu, causal_loops],
    "padding_mask": [padding_ne, padding_view, padding_logical_not],
    "decoder_self_attention_mask": [decoder_mask_and, decoder_mask_loops, decoder_mask_logical],
    "layer_norm": [ln_var_mean, ln_moments, ln_float64],
    "AddNorm": [AddNormOwnNorm, AddNormFunctionalDropout, AddNormTorchLN],
    "PositionwiseFeedForward": [FFNClamp, FFNFunctional, FFNEinsum],
    "mask_tokens": [mask_tokens_bernoulli, mask_tokens_uniform, mask_tokens_rows],
    "BertEmbeddings": [BertEmbeddingsOwn, BertEmbeddingsIndexing, BertEmbeddingsTorchLN],
    "masked_lm_loss": [mlm_logsumexp, mlm_loop, mlm_one_hot],
    "patchify": [patchify_unfold, patchify_loops, patchify_unfold_tensor],
    "unpatchify": [unpatchify_fold, unpatchify_loops, unpatchify_einsum],
    "PatchEmbedding": [PatchEmbeddingLinear, PatchEmbeddingConv, PatchEmbeddingLoops],
    "noam_lr": [noam_sqrt, noam_branches, noam_tensor],
    "warmup_linear_lr": [linear_branches, linear_factor, linear_interp],
    "warmup_cosine_lr": [cosine_branches, cosine_squared, cosine_torch],
    "EncoderLayer": [EncoderLayerRef, EncoderLayerTorchLN, EncoderLayerFused],
    "DecoderLayer": [DecoderLayerLoop, DecoderLayerTorchLN, DecoderLayerFused],
    "greedy_decode": [greedy_lists, greedy_prealloc, greedy_forward],
}

# ---------------------------------------------------------------- calling the shortcut, per assignment


def _shortcuts():
    """(item, submission, dotted name the message must give): one or more per assignment."""
    import transformer_ref.attention as attention
    import transformer_ref.bert as bert
    import transformer_ref.layers as layers
    import transformer_ref.masks as masks
    import transformer_ref.multihead as multihead
    import transformer_ref.positional as positional
    import transformer_ref.schedules as schedules
    import transformer_ref.vit as vit
    from transformer_ref.model import Transformer
    from transformer_ref.rnn import rnn_forward as ref_rnn

    def rnn_torch(x, h0, W_xh, W_hh, b_h):
        rnn = nn.RNN(x.size(-1), W_xh.size(1), batch_first=True).to(x)
        return rnn(x, None if h0 is None else h0[None])

    def rnn_package(x, h0, W_xh, W_hh, b_h):  # bound at import time: caught by inspection
        return ref_rnn(x, h0, W_xh, W_hh, b_h)

    def sdpa_fused(q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None

    class MHATorch(nn.Module):
        def __init__(self, d_model, num_heads):
            super().__init__()
            self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(d_model, d_model) for _ in range(4))
            self.h = num_heads

        def forward(self, query, key, value, mask=None):
            mha = nn.MultiheadAttention(query.size(-1), self.h, batch_first=True)
            return mha(query, key, value)

    class AddNormPackage(layers.AddNorm):
        pass

    def greedy_package(model, src, bos_id, eos_id, max_len):
        return Transformer.greedy_decode(model, src, bos_id, eos_id, max_len)

    return [
        ("rnn_forward", rnn_torch, "torch.nn.RNN"), ("rnn_forward", rnn_package, "transformer_ref.rnn.rnn_forward"),
        ("additive_attention", lambda *a, **k: attention.additive_attention(*a, **k),
         "transformer_ref.attention.additive_attention"),
        ("sinusoidal_positional_encoding", lambda n, d: positional.sinusoidal_positional_encoding(n, d),
         "transformer_ref.positional.sinusoidal_positional_encoding"),
        ("scaled_dot_product_attention", sdpa_fused, "torch.nn.functional.scaled_dot_product_attention"),
        ("self_attention", lambda x, W_q, W_k, W_v, mask=None: attention.self_attention(x, W_q, W_k, W_v, mask),
         "transformer_ref.attention.self_attention"),
        ("split_heads", lambda x, h: multihead.split_heads(x, h), "transformer_ref.multihead.split_heads"),
        ("MultiHeadAttention", MHATorch, "torch.nn.MultiheadAttention"),
        ("causal_mask", lambda T_q, T_k=None, device=None: masks.causal_mask(T_q, T_k, device),
         "transformer_ref.masks.causal_mask"),
        ("layer_norm", lambda x, g, b, eps=1e-5: F.layer_norm(x, x.shape[-1:], g, b, eps),
         "torch.nn.functional.layer_norm"),
        ("AddNorm", AddNormPackage, "transformer_ref.layers.AddNorm"),
        ("mask_tokens", lambda *a, **k: bert.mask_tokens(*a, **k), "transformer_ref.bert.mask_tokens"),
        ("masked_lm_loss", lambda logits, labels: F.cross_entropy(logits.flatten(0, -2), labels.flatten()),
         "torch.nn.functional.cross_entropy"),
        ("patchify", lambda images, p: vit.patchify(images, p), "transformer_ref.vit.patchify"),
        ("noam_lr", lambda s, d, w: schedules.noam_lr(s, d, w), "transformer_ref.schedules.noam_lr"),
        ("greedy_decode", greedy_package, "transformer_ref.model.Transformer.greedy_decode"),
    ]


# ---------------------------------------------------------------- the tests

MISTAKES = [(item, m) for item, entries in CATALOGUE.items() for m in entries]


def test_every_assignment_has_enough_items_mistakes_and_alternatives():
    assert len(testing.ASSIGNMENTS) == 10
    for assignment, items in testing.ASSIGNMENTS.items():
        assert len(items) >= 3, assignment
        assert sum(len(CATALOGUE.get(item, [])) for item in items) >= 5, assignment
        for item in items:
            assert len(ALTERNATIVES[item]) >= 2, item
            assert CATALOGUE.get(item), f"{item} has no catalogued mistake"
        assert sum(len(ALTERNATIVES[item]) for item in items) >= 3 * len(items) - 1, assignment
    shortcut_items = {item for item, _, _ in _shortcuts()}
    for assignment, items in testing.ASSIGNMENTS.items():
        assert shortcut_items & set(items), f"no shortcut test for {assignment}"


@pytest.mark.parametrize("item", sorted(testing.EXERCISES))
def test_reference_passes_its_own_comparison(item):
    ex = testing.EXERCISES[item]
    for seed in (0, 1):
        cases = testing.make_cases(item, seed)
        report = testing.compare(item, cases, testing.run_student(item, ex.reference(), cases, watch=False))
        assert report.passed, report.message


@pytest.mark.parametrize("item,mistake", MISTAKES, ids=[f"{i}-{m.key}" for i, m in MISTAKES])
def test_mistake_fails_with_its_diagnostic(item, mistake):
    report = testing.check(item, mistake.impl)
    assert not report.passed, f"the mistake {mistake.key!r} of {item} passes the check"
    assert report.mistake == mistake.key, report.message
    assert f"Likely mistake: {mistake.says}" in report.message
    with pytest.raises(AssertionError, match="Likely mistake"):
        getattr(testing, f"check_{item}")(mistake.impl)


ALT = [(item, impl) for item, impls in ALTERNATIVES.items() for impl in impls]


@pytest.mark.parametrize("item,impl", ALT, ids=[f"{i}-{getattr(f, '__name__', 'cls')}" for i, f in ALT])
def test_valid_alternative_passes(item, impl):
    report = testing.check(item, impl, seeds=(0, 1))
    assert report.passed, report.message


@pytest.mark.parametrize("index", range(len(_shortcuts())))
def test_shortcut_fails_with_the_shortcut_message(index):
    item, impl, dotted = _shortcuts()[index]
    report = testing.check(item, impl)
    assert not report.passed and report.shortcut, report.message
    assert dotted in report.message and "scores 0" in report.message
    assert report.mistake is None

"""transformer_ref.bert against Hugging Face transformers (tiny random configs, nothing downloaded),
and mask_tokens against its exact invariants and the binomial statistics of BERT's recipe."""

import math

import pytest
import torch
import torch.nn.functional as F
import transformers

from transformer_ref.bert import (BertConfig, BertEmbeddings, BertForMaskedLM, BertForSequenceClassification,
                                  BertModel, load_hf_bert, mask_tokens)

VOCAB, D_MODEL, LAYERS, HEADS, D_FF, MAX_LEN = 53, 24, 2, 3, 37, 16
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=2e-5)}


def hf_config(**overrides) -> transformers.BertConfig:
    kwargs = dict(vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  intermediate_size=D_FF, max_position_embeddings=MAX_LEN, type_vocab_size=2,
                  hidden_act="gelu", attn_implementation="eager", pad_token_id=0)
    kwargs.update(overrides)
    return transformers.BertConfig(**kwargs)


def random_hf(cls, seed: int = 0, **config_overrides):
    """A Hugging Face model in eval mode whose every parameter (LayerNorm too) is random, so a swapped
    weight/bias or a LayerNorm left at its initialisation cannot pass unnoticed."""
    torch.manual_seed(seed)
    model = cls(hf_config(**config_overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def batch(device, B=3, T=11, seed=1):
    """Token ids, segment ids and a padded HF attention mask (lengths T, 6, 1)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (B, T), generator=g)
    token_type_ids = torch.randint(0, 2, (B, T), generator=g)
    lengths = torch.tensor([T, 6, 1][:B])
    attention_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    return input_ids.to(device), token_type_ids.to(device), attention_mask.to(device)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bert_model_matches_hugging_face(device, dtype):
    hf = random_hf(transformers.BertModel).to(device, dtype)
    ours = BertModel(BertConfig.from_hf(hf.config))
    load_hf_bert(ours, hf.state_dict())
    ours = ours.to(device, dtype).eval()
    input_ids, token_type_ids, attention_mask = batch(device)
    with torch.no_grad():
        expected = hf(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      output_attentions=True)
        got = ours(input_ids, token_type_ids, attention_mask, need_weights=True)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, **TOL[dtype])
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, **TOL[dtype])
    assert len(got.attentions) == LAYERS
    for ours_w, hf_w in zip(got.attentions, expected.attentions):
        torch.testing.assert_close(ours_w, hf_w, **TOL[dtype])


def test_bert_masked_lm_matches_hugging_face(device):
    hf = random_hf(transformers.BertForMaskedLM).to(device, torch.float64)
    ours = BertForMaskedLM(BertConfig.from_hf(hf.config)).to(device, torch.float64).eval()
    assert load_hf_bert(ours, hf.state_dict()) == ([], [])
    input_ids, token_type_ids, attention_mask = batch(device)
    with torch.no_grad():
        expected = hf(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
        got = ours(input_ids, token_type_ids, attention_mask)
    assert got.shape == (3, 11, VOCAB)
    torch.testing.assert_close(got, expected, **TOL[torch.float64])


def test_bert_sequence_classification_matches_hugging_face(device):
    hf = random_hf(transformers.BertForSequenceClassification, num_labels=4).to(device, torch.float64)
    ours = BertForSequenceClassification(BertConfig.from_hf(hf.config), num_classes=4)
    load_hf_bert(ours, hf.state_dict())
    ours = ours.to(device, torch.float64).eval()
    input_ids, token_type_ids, attention_mask = batch(device)
    with torch.no_grad():
        expected = hf(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
        got = ours(input_ids, token_type_ids, attention_mask)
    torch.testing.assert_close(got, expected, **TOL[torch.float64])


def test_padding_does_not_change_real_tokens(device):
    """Independent check of the mask conversion: a padded sequence's real positions equal the unpadded run."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=VOCAB, d_model=D_MODEL, num_layers=LAYERS, num_heads=HEADS,
                                 d_ff=D_FF, max_len=MAX_LEN, dropout=0.0)).to(device, torch.float64).eval()
    input_ids, token_type_ids, attention_mask = batch(device)
    with torch.no_grad():
        padded = model(input_ids, token_type_ids, attention_mask)
        alone = model(input_ids[1:2, :6], token_type_ids[1:2, :6])
        weights = model(input_ids, token_type_ids, attention_mask.bool(), need_weights=True).attentions
    torch.testing.assert_close(padded.last_hidden_state[1:2, :6], alone.last_hidden_state)
    torch.testing.assert_close(padded.pooler_output[1:2], alone.pooler_output)
    for w in weights:                                                                 # (B, H, T, T)
        assert (w[1, :, :, 6:] == 0).all() and (w[2, :, :, 1:] == 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))


def test_embeddings_formula(device):
    torch.manual_seed(0)
    emb = BertEmbeddings(VOCAB, D_MODEL, MAX_LEN, type_vocab_size=2, layer_norm_eps=1e-12).to(device)
    input_ids, token_type_ids, _ = batch(device)
    x = (emb.word_embeddings.weight[input_ids] + emb.position_embeddings.weight[:input_ids.size(1)]
         + emb.token_type_embeddings.weight[token_type_ids])
    expected = F.layer_norm(x, (D_MODEL,), emb.norm.weight, emb.norm.bias, eps=1e-12)
    torch.testing.assert_close(emb(input_ids, token_type_ids), expected)
    # token_type_ids default to segment 0
    torch.testing.assert_close(emb(input_ids), emb(input_ids, torch.zeros_like(input_ids)))


def test_bert_trains_on_one_batch():
    """A few Adam steps of masked-LM training on one fixed batch lower the loss clearly."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, d_model=32, num_layers=1, num_heads=4, d_ff=64, max_len=MAX_LEN,
                        dropout=0.0)
    model = BertForMaskedLM(config)
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, VOCAB, (4, MAX_LEN), generator=g)
    inputs, labels = mask_tokens(input_ids, mask_token_id=3, vocab_size=VOCAB, special_token_ids=[0, 1, 2, 3],
                                 mlm_probability=0.3, generator=g)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(inputs).flatten(0, 1), labels.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


# --- conversion errors and bad input ------------------------------------------------------------

def test_load_hf_bert_reports_missing_and_unexpected_keys():
    hf = random_hf(transformers.BertModel)
    mlm = BertForMaskedLM(BertConfig.from_hf(hf.config))
    with pytest.raises(ValueError, match=r"(?s)missing.*mlm_head\.dense\.weight.*unexpected.*pooler\.dense\.weight"):
        load_hf_bert(mlm, hf.state_dict())
    # Non-strict: a pre-trained BertModel into the classifier's backbone; only the classifier stays new.
    classifier = BertForSequenceClassification(BertConfig.from_hf(hf.config), num_classes=2)
    missing, unexpected = load_hf_bert(classifier, hf.state_dict(), strict=False)
    assert missing == ["classifier.weight", "classifier.bias"] and unexpected == []
    torch.testing.assert_close(classifier.bert.pooler.weight, hf.state_dict()["pooler.dense.weight"])
    # Buffers that older transformers versions saved are skipped.
    old_format = dict(hf.state_dict(), **{"embeddings.position_ids": torch.arange(MAX_LEN)[None]})
    assert load_hf_bert(BertModel(BertConfig.from_hf(hf.config)), old_format) == ([], [])


def test_load_hf_bert_shape_mismatch_names_the_key():
    hf = random_hf(transformers.BertModel)
    ours = BertModel(BertConfig.from_hf(hf_config(intermediate_size=D_FF + 1)))
    with pytest.raises(ValueError, match=r"intermediate\.dense\.weight.*\(37, 24\).*\(38, 24\)"):
        load_hf_bert(ours, hf.state_dict())


def test_load_hf_bert_rejects_untied_decoder():
    hf = random_hf(transformers.BertForMaskedLM)
    state = dict(hf.state_dict())
    state["cls.predictions.decoder.weight"] = state["cls.predictions.decoder.weight"] + 1
    with pytest.raises(ValueError, match="ties them"):
        load_hf_bert(BertForMaskedLM(BertConfig.from_hf(hf.config)), state)


@pytest.mark.parametrize("override, message", [
    (dict(hidden_act="relu"), "hidden_act must be 'gelu'"),
    (dict(hidden_act="gelu_new"), "hidden_act must be 'gelu'"),
])
def test_config_from_hf_rejects_what_we_do_not_implement(override, message):
    with pytest.raises(ValueError, match=message):
        BertConfig.from_hf(hf_config(**override))


def test_config_from_hf_fields():
    config = BertConfig.from_hf(hf_config(hidden_dropout_prob=0.25, layer_norm_eps=1e-7))
    assert config == BertConfig(vocab_size=VOCAB, d_model=D_MODEL, num_layers=LAYERS, num_heads=HEADS, d_ff=D_FF,
                                max_len=MAX_LEN, type_vocab_size=2, layer_norm_eps=1e-7, dropout=0.25, pad_token_id=0)


def test_bert_bad_input(device):
    model = BertModel(BertConfig(vocab_size=VOCAB, d_model=D_MODEL, num_layers=1, num_heads=HEADS, d_ff=D_FF,
                                 max_len=MAX_LEN)).to(device)
    input_ids, token_type_ids, attention_mask = batch(device)
    with pytest.raises(ValueError, match=r"T = 17 tokens .* max_len = 16"):
        model(torch.zeros(2, 17, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match=r"attention_mask must hold 1 \(real token\) and 0"):
        model(input_ids, attention_mask=(attention_mask.double() - 1) * 10000)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(B, T\) = \(3, 11\)"):
        model(input_ids, attention_mask=attention_mask[:, None, :])
    with pytest.raises(ValueError, match=r"token_type_ids must have the shape of input_ids"):
        model(input_ids, token_type_ids[:, :5])
    with pytest.raises(TypeError, match=r"input_ids must be an integer tensor of ids; got torch.float32"):
        model(input_ids.float())
    with pytest.raises(ValueError, match=r"input_ids must have shape \(B, T\)"):
        model(input_ids[0])


# --- mask_tokens ---------------------------------------------------------------------------------

MASK_ID, SPECIAL = 3, [0, 1, 2, 3]          # [PAD], [CLS], [SEP], [MASK]


def corpus(device, B, T, vocab=VOCAB, seed=0):
    """Random ids in [0, vocab), so special tokens occur everywhere, as [CLS]/[SEP]/[PAD] do."""
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed)).to(device)


def test_mask_tokens_invariants(device):
    input_ids = corpus(device, 64, 50)
    original = input_ids.clone()
    inputs, labels = mask_tokens(input_ids, MASK_ID, VOCAB, SPECIAL, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(input_ids, original, rtol=0, atol=0)                   # not modified in place
    assert inputs.shape == labels.shape == input_ids.shape
    assert inputs.dtype == labels.dtype == input_ids.dtype and inputs.device == labels.device == input_ids.device
    chosen = labels != -100
    special = torch.isin(input_ids, torch.tensor(SPECIAL, device=device))
    assert not (chosen & special).any()                                               # specials never chosen
    assert torch.equal(labels[chosen], input_ids[chosen])                             # labels = originals
    assert torch.equal(inputs[~chosen], input_ids[~chosen])                           # the rest untouched
    assert ((inputs[chosen] >= 0) & (inputs[chosen] < VOCAB)).all()
    assert 0 < chosen.sum() < (~special).sum()
    assert (inputs[chosen] == MASK_ID).any()


def test_mask_tokens_is_deterministic_and_device_independent(device):
    input_ids = corpus(device, 16, 40)

    def run(seed, ids=input_ids):
        return mask_tokens(ids, MASK_ID, VOCAB, SPECIAL, generator=torch.Generator().manual_seed(seed))

    first, again, other = run(5), run(5), run(6)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    on_cpu = run(5, input_ids.cpu())                     # a CPU generator gives the same answer on any device
    assert torch.equal(first[0].cpu(), on_cpu[0]) and torch.equal(first[1].cpu(), on_cpu[1])
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.manual_seed(0)
    inputs, labels = mask_tokens(input_ids, MASK_ID, VOCAB, torch.tensor(SPECIAL))  # global generator, tensor ids
    assert inputs.device == input_ids.device and (labels != -100).any()


@pytest.mark.cuda
def test_mask_tokens_with_cuda_generator(device):
    if device.type != "cuda":
        pytest.skip("needs CUDA inputs")
    input_ids = corpus(device, 16, 40)
    runs = [mask_tokens(input_ids, MASK_ID, VOCAB, SPECIAL, generator=torch.Generator(device).manual_seed(2))
            for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][0].device == input_ids.device


def within_binomial(count: int, n: int, p: float, sigmas: float = 6.0) -> bool:
    """|count - n p| <= sigmas * sqrt(n p (1-p)).  Two-sided normal tail at 6 sigma: 2e-9 per check."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_mask_tokens_statistics(device):
    """1M tokens, vocab 30. Every count below is binomial given what precedes it; each of the 33 checks
    allows 6 standard deviations. The exact binomial tails outside those bounds are 2e-9 to 6e-9 per
    check, so a correct implementation fails about once in 10 million runs, while a wrong rate
    (e.g. 12% chosen, 70/20/10, or random tokens that avoid the special ids) fails by far more."""
    vocab = 30
    input_ids = corpus(device, 1000, 1000, vocab=vocab, seed=3)
    inputs, labels = mask_tokens(input_ids, MASK_ID, vocab, SPECIAL, generator=torch.Generator().manual_seed(4))
    inputs, labels, input_ids = inputs.cpu(), labels.cpu(), input_ids.cpu()
    special = torch.isin(input_ids, torch.tensor(SPECIAL))
    chosen = labels != -100
    n_candidates, n_chosen = int((~special).sum()), int(chosen.sum())
    assert within_binomial(n_chosen, n_candidates, 0.15)

    # Of the chosen (never [MASK] themselves): [MASK] w.p. 0.8 + 0.1/V (a random draw may hit it too),
    # unchanged w.p. 0.1 + 0.1/V, another token w.p. 0.1 (V-2)/V.
    out, orig = inputs[chosen], input_ids[chosen]
    assert within_binomial(int((out == MASK_ID).sum()), n_chosen, 0.8 + 0.1 / vocab)
    assert within_binomial(int((out == orig).sum()), n_chosen, 0.1 + 0.1 / vocab)
    # The random replacement is uniform over [0, vocab): for each token v other than [MASK],
    # #(out = v, orig != v) ~ Binomial(#(orig != v), 0.1 / V).
    for v in range(vocab):
        if v == MASK_ID:
            continue
        others = orig != v
        assert within_binomial(int((out[others] == v).sum()), int(others.sum()), 0.1 / vocab), v
    # Chosen uniformly along the sequence: first position vs. the rest.
    assert within_binomial(int(chosen[:, 0].sum()), int((~special[:, 0]).sum()), 0.15)


def test_mask_tokens_probability_edges(device):
    input_ids = corpus(device, 8, 20)
    special = torch.isin(input_ids, torch.tensor(SPECIAL, device=device))
    _, none = mask_tokens(input_ids, MASK_ID, VOCAB, SPECIAL, mlm_probability=0.0)
    _, every = mask_tokens(input_ids, MASK_ID, VOCAB, SPECIAL, mlm_probability=1.0)
    assert (none == -100).all()
    assert torch.equal(every != -100, ~special)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(input_ids=torch.rand(2, 3)), TypeError,
     "input_ids must be an integer tensor of token ids; got torch.float32"),
    (dict(mask_token_id=VOCAB), ValueError, r"mask_token_id must be in \[0, vocab_size = 53\); got 53"),
    (dict(mlm_probability=1.5), ValueError, r"mlm_probability must be in \[0, 1\]; got 1.5"),
    (dict(vocab_size=0), ValueError, "vocab_size must be a positive int; got 0"),
])
def test_mask_tokens_bad_input(kwargs, error, message):
    args = dict(input_ids=torch.zeros(2, 3, dtype=torch.long), mask_token_id=MASK_ID, vocab_size=VOCAB,
                special_token_ids=SPECIAL)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        mask_tokens(**args)

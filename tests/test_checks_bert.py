"""The checks of assignment 08_bert (grader/checks/bert.py): each catalogued mistake fails with its diagnostic,
valid alternatives written the way a student might pass (for mask_tokens: other random processes with the
same distribution), calling the shortcut scores 0, and grade() gives partial credit per group."""

from __future__ import annotations

import io
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grader.checks import bert
from grader.checks.cases import make_cases
from grader.checks.compare import compare
from grader.checks.report import check
from grader.checks.run import run_student
from transformer_ref import bert as ref_bert

import checks_contract as contract

ITEMS = bert.ITEMS
CHECKS = {bert.MASK_TOKENS: bert.check_mask_tokens, bert.BERT_EMBEDDINGS: bert.check_BertEmbeddings,
          bert.MASKED_LM_LOSS: bert.check_masked_lm_loss}

# ---------------------------------------------------------------- valid alternatives


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


class OwnLayerNorm(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x):
        var, mean = torch.var_mean(x, dim=-1, keepdim=True, unbiased=False)
        return (x - mean) / (var + self.eps).sqrt() * self.weight + self.bias


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


ALTERNATIVES = {
    bert.MASK_TOKENS: [mask_tokens_bernoulli, mask_tokens_uniform, mask_tokens_rows],
    bert.BERT_EMBEDDINGS: [BertEmbeddingsOwn, BertEmbeddingsIndexing, BertEmbeddingsTorchLN],
    bert.MASKED_LM_LOSS: [mlm_logsumexp, mlm_loop, mlm_one_hot],
}

# ---------------------------------------------------------------- cheats: every rule and rate on target, no randomness
# from `generator` (issue 15, item 11). Each must fail; the message must say where the randomness should come from.

GOLDEN = 0.6180339887498949   # frac(n * GOLDEN) spreads any run of positions evenly over [0, 1)


def _by_rule(input_ids, u, action, random_ids, mask_token_id, special_token_ids, mlm_probability):
    """The corruption for given per-token numbers u (chosen if < p), action (< 0.8 mask, < 0.9 random) and ids."""
    chosen = (u < mlm_probability) & ~torch.isin(input_ids, torch.as_tensor(special_token_ids, dtype=input_ids.dtype))
    inputs = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids.to(input_ids.dtype), inputs)
    return inputs, torch.where(chosen, input_ids, torch.full_like(input_ids, -100))


def _positions(input_ids, shift=0.0):
    n = torch.arange(input_ids.numel(), dtype=torch.float64).reshape(input_ids.shape) + shift
    return torch.frac(n * GOLDEN), torch.frac(n * 2 ** 0.5)


def cheat_by_position(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15, generator=None):
    """No random number at all: chosen, action and replacement are fixed functions of the position."""
    u, action = _positions(input_ids)
    n = torch.arange(input_ids.numel()).reshape(input_ids.shape)
    return _by_rule(input_ids, u, action, (n * 7919) % vocab_size, mask_token_id, special_token_ids, mlm_probability)


def cheat_fixed_manual_seed(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                            generator=None):
    """The reference's draws, from the global generator reseeded with a constant."""
    torch.manual_seed(0)
    return _by_rule(input_ids, torch.rand(input_ids.shape), torch.rand(input_ids.shape),
                    torch.randint(vocab_size, input_ids.shape), mask_token_id, special_token_ids, mlm_probability)


def cheat_python_random_seeded(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                               generator=None):
    rng = random.Random(1234)
    draws = [[rng.random(), rng.random(), rng.randrange(vocab_size)] for _ in range(input_ids.numel())]
    u, action, ids = torch.tensor(draws, dtype=torch.float64).T.reshape(3, *input_ids.shape)
    return _by_rule(input_ids, u, action, ids.long(), mask_token_id, special_token_ids, mlm_probability)


def cheat_python_random(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                        generator=None):
    u = torch.tensor([random.random() for _ in range(input_ids.numel())]).reshape(input_ids.shape)
    action = torch.tensor([random.random() for _ in range(input_ids.numel())]).reshape(input_ids.shape)
    ids = torch.tensor([random.randrange(vocab_size) for _ in range(input_ids.numel())]).reshape(input_ids.shape)
    return _by_rule(input_ids, u, action, ids, mask_token_id, special_token_ids, mlm_probability)


def cheat_generator_once_then_positions(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                                        generator=None):
    """Draws from `generator` (so it looks used) but throws the numbers away."""
    torch.rand(input_ids.shape, generator=generator)
    return cheat_by_position(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability)


def cheat_shifted_pattern(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                          generator=None):
    """A positional pattern moved by one number from `generator`: every seed differs and every position is chosen
    at exactly the rate across seeds, but the tokens are not chosen independently of each other."""
    shift = float(torch.rand((), generator=generator, dtype=torch.float64)) * 1e6
    u, _ = _positions(input_ids, shift)
    action = torch.rand(input_ids.shape, generator=generator)
    ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    return _by_rule(input_ids, u, action, ids, mask_token_id, special_token_ids, mlm_probability)


def cheat_two_patterns(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                       generator=None):
    """One of two fixed patterns, picked by one number from `generator` (alternating over seeds)."""
    flip = float(torch.rand((), generator=generator)) < 0.5
    u, action = _positions(input_ids, 0.5 if flip else 0.0)
    ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    return _by_rule(input_ids, u, action, ids, mask_token_id, special_token_ids, mlm_probability)


def cheat_action_by_position(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                             generator=None):
    """Chosen at random from `generator`, but [MASK] / random / keep decided by the position (8 of every 10)."""
    u = torch.rand(input_ids.shape, generator=generator)
    action = (torch.arange(input_ids.numel()).reshape(input_ids.shape) % 10 + 0.5) / 10
    ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    return _by_rule(input_ids, u, action, ids, mask_token_id, special_token_ids, mlm_probability)


CHEATS = [cheat_by_position, cheat_fixed_manual_seed, cheat_python_random_seeded, cheat_python_random,
          cheat_generator_once_then_positions, cheat_shifted_pattern, cheat_two_patterns, cheat_action_by_position]


# ---------------------------------------------------------------- shortcuts


def mask_tokens_package(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                        generator=None):
    return ref_bert.mask_tokens(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability, generator)


class BertEmbeddingsPackage(ref_bert.BertEmbeddings):
    pass


def mlm_cross_entropy(logits, labels):
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten())


SHORTCUTS = [(bert.MASK_TOKENS, mask_tokens_package, "transformer_ref.bert.mask_tokens"),
             (bert.BERT_EMBEDDINGS, BertEmbeddingsPackage, "transformer_ref.bert.BertEmbeddings"),
             (bert.MASKED_LM_LOSS, mlm_cross_entropy, "torch.nn.functional.cross_entropy")]

# ---------------------------------------------------------------- the contract (tests/checks_contract.py)


def test_the_assignment_has_its_items_groups_mistakes_and_alternatives():
    contract.assert_assignment_shape(bert, "08_bert", ["mask_tokens", "BertEmbeddings", "masked_lm_loss"],
                                     ALTERNATIVES, CHECKS)


@pytest.mark.parametrize("seed", (0, 1))
@pytest.mark.parametrize("item", ITEMS, ids=contract.item_id)
def test_the_reference_passes_and_scores_full_marks(item, seed):
    contract.assert_reference_scores_full_marks(item, seed)


@pytest.mark.parametrize("item,mistake", contract.mistake_params(ITEMS))
def test_mistake_fails_with_its_diagnostic(item, mistake):
    contract.assert_mistake_named(item, mistake, CHECKS[item])


@pytest.mark.parametrize("item,impl", contract.alternative_params(ALTERNATIVES))
def test_valid_alternative_passes_and_scores_full_marks(item, impl):
    contract.assert_alternative_passes(item, impl, CHECKS[item])


@pytest.mark.parametrize("item,impl,dotted", contract.shortcut_params(SHORTCUTS))
def test_shortcut_fails_with_the_shortcut_message_and_scores_0(item, impl, dotted):
    contract.assert_shortcut_scores_zero(item, impl, dotted)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("item", ITEMS, ids=contract.item_id)
def test_cuda_copies_pass_for_the_reference(item):
    contract.assert_cuda_copies_pass(item, item.reference(), watch=False)


# ---------------------------------------------------------------- assignment-specific tests


def test_mask_tokens_statistics_pass_for_a_correct_solution_on_many_seeds():
    """6-sigma tolerances: a correct solution should essentially never fail (here: 8 seeds)."""
    report = check(bert.MASK_TOKENS, mask_tokens_uniform, seeds=range(10, 18))
    assert report.passed, report.message


def test_mask_tokens_invariant_messages():
    def keeps_everything(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                         generator=None):
        return input_ids.clone(), torch.full_like(input_ids, -100)
    report = check(bert.MASK_TOKENS, keeps_everything)
    assert not report.passed and "mlm_probability = 1.0 every word must be chosen" in report.message
    assert report.mistake == "probability"

    def returns_one(input_ids, *args, **kwargs):
        return input_ids.clone()
    assert "should return a tuple (inputs, labels)" in check(bert.MASK_TOKENS, returns_one).message


def test_grade_a_global_random_generator_fails_only_the_reproducibility_group():
    result = contract.graded(bert.MASK_TOKENS, bert._mt_global_rng)
    assert {g.group: g.passed for g in result.groups} == {
        "small batches": True, "mlm_probability 0 and 1": True, "generator seeds": False,
        "statistics of a large batch": True}
    assert result.fraction == 0.75 and result.mistake == "global_rng"
    assert result.message.startswith("mask_tokens: right on small batches, mlm_probability 0 and 1 and statistics")
    assert "Likely mistake: the random numbers do not come from `generator`" in result.message


def test_grade_a_wrong_split_fails_only_the_statistics():
    result = contract.graded(bert.MASK_TOKENS, bert._mt_all_masked)
    assert [g.group for g in result.groups if not g.passed] == ["statistics of a large batch"]
    assert result.mistake == "split" and "replaced by [MASK] is 100.00%" in result.message


def test_grade_averaging_over_every_position_passes_where_every_label_is_used():
    result = contract.graded(bert.MASKED_LM_LOSS, bert._mlm_mean_over_all)
    assert {g.group: g.passed for g in result.groups} == {
        "every label used": True, "some labels -100 (ignored)": False, "float64": False}
    assert result.mistake == "mean_over_all" and result.fraction == pytest.approx(1 / 3)


def test_mask_tokens_cases_and_outcomes_survive_a_round_trip_through_torch_save():
    """The grader runs the submission in another process: the generators in the cases must serialise."""
    item = bert.MASK_TOKENS
    buffer = io.BytesIO()
    torch.save(make_cases(item, 0), buffer)
    buffer.seek(0)
    cases = torch.load(buffer, weights_only=False)
    outcomes = run_student(item, mask_tokens_rows, cases)
    buffer = io.BytesIO()
    torch.save(outcomes, buffer)
    buffer.seek(0)
    assert compare(item, cases, torch.load(buffer, weights_only=False)).passed


@pytest.mark.parametrize("cheat", CHEATS, ids=lambda f: f.__name__)
def test_mask_tokens_without_randomness_from_generator_fails(cheat):
    """Every rule and every rate on target, but the randomness not from `generator` (no draw at all, a fixed seed
    inside, the global or Python's generator, a pattern moved or picked by one draw): the check fails and says
    where the randomness must come from, on every seed the grader might use, and grade() takes points off."""
    for seeds in ((0,), (1, 2), (7,)):
        report = check(bert.MASK_TOKENS, cheat, seeds=seeds)
        assert not report.passed, (cheat.__name__, seeds)
        assert report.mistake in ("same_for_every_seed", "global_rng", "positions", "split"), report.message
        assert "generator" in report.message or "independently" in report.message, report.message
    assert contract.graded(bert.MASK_TOKENS, cheat).fraction <= 0.75


def test_a_positional_rule_is_told_the_seeds_give_the_same_tokens():
    report = check(bert.MASK_TOKENS, cheat_by_position)
    assert report.mistake == "same_for_every_seed"
    assert ("your mask_tokens gives the same tokens for different generator seeds: draw the random numbers from "
            "`generator`") in report.message
    result = contract.graded(bert.MASK_TOKENS, cheat_by_position)
    assert {g.group: g.passed for g in result.groups}["generator seeds"] is False


def test_mask_tokens_rates_per_position_and_pairs_pass_for_correct_solutions_on_many_seeds():
    """The per-position chi-square (8 sigma) and the pair rates (6 sigma) do not fail a correct process."""
    for impl in (bert.MASK_TOKENS.reference(), *ALTERNATIVES[bert.MASK_TOKENS]):
        report = check(bert.MASK_TOKENS, impl, seeds=range(20, 26))
        assert report.passed, (impl.__name__, report.message)


# ---------------------------------------------------------------- never the wrong way (issue 16, item 4)
# Labels inverted (-100 where a token was chosen, the token elsewhere) in three spellings: the special tokens
# are excluded, so "exclude them with torch.isin" would send the student the wrong way.

def _chosen_and_inputs(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability, generator):
    special = torch.isin(input_ids, torch.tensor(special_token_ids, dtype=input_ids.dtype))
    chosen = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~special
    action = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    inputs = torch.where(chosen & (action < 0.8), mask_token_id, input_ids)
    return chosen, torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)


def labels_inverted_where(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                          generator=None):
    chosen, inputs = _chosen_and_inputs(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability,
                                        generator)
    return inputs, torch.where(chosen, -100, input_ids)


def labels_inverted_masked_fill(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                                generator=None):
    chosen, inputs = _chosen_and_inputs(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability,
                                        generator)
    return inputs, input_ids.masked_fill(chosen, -100)


def labels_inverted_indexing(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                             generator=None):
    chosen, inputs = _chosen_and_inputs(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability,
                                        generator)
    labels = input_ids.clone()
    labels[chosen] = -100
    return inputs, labels


@pytest.mark.parametrize("impl", [labels_inverted_where, labels_inverted_masked_fill, labels_inverted_indexing],
                         ids=lambda f: f.__name__)
def test_inverted_labels_are_named_as_labels_never_as_special_tokens_chosen(impl):
    report = check(bert.MASK_TOKENS, impl)
    assert not report.passed and report.mistake == "labels", report.message
    assert "inverted" in report.message and "isin" not in report.message and "special" not in report.message
    with pytest.raises(contract.CheckFailed, match="inverted"):
        bert.check_mask_tokens(impl)


# ---------------------------------------------------------------- no silent pass: the device (issue 16, item 3)

class BertEmbeddingsPositionsOnDefault(BertEmbeddingsOwn):
    """Right on the CPU; on a GPU, torch.arange(T) without device= is on the CPU while input_ids is not."""

    def forward(self, input_ids, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = torch.zeros(input_ids.shape, dtype=torch.long)
        positions = torch.arange(input_ids.size(1))
        return self.norm(self.word_embeddings(input_ids) + self.position_embeddings(positions)
                         + self.token_type_embeddings(token_type_ids))


def test_bert_embeddings_making_positions_on_the_default_device_fails_the_device_group_by_name():
    item = bert.BERT_EMBEDDINGS
    report = check(item, BertEmbeddingsPositionsOnDefault)
    assert not report.passed and "create new tensors with device=input_ids.device" in report.message, report.message
    result = contract.graded(item, BertEmbeddingsPositionsOnDefault)
    assert [g.group for g in result.groups if not g.passed] == ["new tensors on input_ids' device"], result.message

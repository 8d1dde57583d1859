"""Checks for assignment 08_bert: mask_tokens, BertEmbeddings, masked_lm_loss.

Each graded item below has, in this order: the cases it is called on (every case in a group a student
can read), its known mistakes (one small function or class each, next to what the student is told), the
Item that ties them to the reference in transformer_ref and the shortcuts it may not call, and its
check_<item> function for the notebook. mask_tokens is random, so it is not compared with the reference's
output but with the rules of BERT's corruption and their statistics (`_mask_tokens_compare`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from grader.checks.add_norm import norm_state
from grader.checks.cases import Case, randn
from grader.checks.item import Item, Mistake, Reference
from grader.checks.report import Report, assert_passes, describe
from grader.checks.wiring import explain_layer

ASSIGNMENT = "08_bert"

# ---------------------------------------------------------------- forbidden shortcuts

BERT_SHORTCUTS = ("transformer_ref.bert.mask_tokens", "transformer_ref.bert.BertEmbeddings.forward",
                  "transformer_ref.bert.BertModel.forward", "transformer_ref.bert.BertForMaskedLM.forward",
                  "transformers.models.bert.modeling_bert.BertEmbeddings.forward",
                  "transformers.data.data_collator.DataCollatorForLanguageModeling.torch_mask_tokens")
CROSS_ENTROPY_SHORTCUTS = ("torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss",
                           "torch.nn.CrossEntropyLoss.forward", "torch.nn.NLLLoss.forward")
CROSS_ENTROPY_OPS = ("aten::cross_entropy_loss", "aten::nll_loss*")

# ---------------------------------------------------------------- mask_tokens

SPECIAL_IDS = (0, 1, 2, 3)  # [PAD], [CLS], [SEP], [MASK] in the cases below
MASK_ID = 3
AGAIN = "the same inputs and generator seed again (the result must be the same)"
STATISTICS = "statistics: "   # the label of the large case starts with this
ACROSS_SEEDS = "across seeds: "   # the labels of the cases that call it on one input_ids with many generator seeds
SEEDS = 32                        # how many seeds, for each of mlm_probability 0.15 and 1.0
LAGS = 8                          # pairs of tokens 1..LAGS apart must be chosen together at the rate p * p
SEEDS_GROUP = "generator seeds"


def _bert_batch(g: torch.Generator, B: int, T: int, vocab: int) -> torch.Tensor:
    """[CLS] w w ... [SEP] [PAD] ...: random words in [4, vocab), random lengths."""
    ids = torch.randint(4, vocab, (B, T), generator=g)
    lengths = torch.randint(max(2, T // 2), T + 1, (B,), generator=g)
    ids[:, 0] = 1
    ids[torch.arange(B), lengths - 1] = 2
    return ids.masked_fill(torch.arange(T) >= lengths[:, None], 0)


def _mask_tokens_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, ids: torch.Tensor, vocab: int, group: str, p: float = 0.15, at: int = 1000 + seed) -> Case:
        return Case(label, (ids, MASK_ID, vocab, list(SPECIAL_IDS)),
                    {"mlm_probability": p, "generator": torch.Generator().manual_seed(at)}, group=group)
    small = _bert_batch(g, 4, 12, 50)
    spread, first = _bert_batch(g, 4, 64, 50), int(torch.randint(2**40, (), generator=g))
    across = [case(f"{ACROSS_SEEDS}input_ids (4, 64), mlm_probability {p}, generator seeded with {first + k}",
                   spread, 50, SEEDS_GROUP, p, first + k) for p in (0.15, 1.0) for k in range(SEEDS)]
    return [case("input_ids (4, 12), vocab 50", small, 50, "small batches"),
            case("input_ids (1, 1) holding one word", torch.tensor([[7]]), 50, "small batches"),
            case("input_ids (3, 8) of dtype int32", _bert_batch(g, 3, 8, 30).int(), 30, "small batches"),
            case("mlm_probability 1.0: every word is chosen", _bert_batch(g, 3, 10, 40), 40,
                 "mlm_probability 0 and 1", 1.0),
            case("mlm_probability 0.0: nothing is chosen", _bert_batch(g, 3, 10, 40), 40,
                 "mlm_probability 0 and 1", 0.0),
            case(f"input_ids (4, 12), generator seeded with {1000 + seed}", small, 50, SEEDS_GROUP),
            case(AGAIN, small, 50, SEEDS_GROUP),
            *across,
            case(STATISTICS + "input_ids (96, 512), vocab 1000", _bert_batch(g, 96, 512, 1000), 1000,
                 "statistics of a large batch")]


def _mask_tokens_compare(item: Item, cases: Sequence[Case], outcomes: Sequence) -> Report:
    """Exact invariants on every case; the same result for the case labelled AGAIN as for the case before it;
    different results for different seeds, and each position at the stated rates across them (the ACROSS_SEEDS
    cases, at 8 sigma); statistics on the case labelled STATISTICS (each at 6 sigma, so a correct solution fails
    one of them with probability below 1e-7 per seed). Works on any subset of the cases (one group, or all)."""
    def fail(key: str | None, message: str) -> Report:
        says = next((m.says for m in item.mistakes if m.key == key), None)
        return Report(False, f"{item.name} is not right yet.\n{message}"
                      + (f"\nLikely mistake: {says}" if says else ""), mistake=key)
    for i, (case, out) in enumerate(zip(cases, outcomes)):
        where = f"case {i + 1} of {len(cases)} ({case.label})"
        if (report := _mask_tokens_invariants(item, case, out, where, fail)) is not None:
            return report
    for i in range(1, len(cases)):
        if cases[i].label.startswith(AGAIN):
            first, again = outcomes[i - 1].value, outcomes[i].value
            if not all(torch.equal(a, b) for a, b in zip(first, again)):
                return fail("global_rng", "the same inputs with generators seeded alike gave different results: take "
                                          "every random number from `generator` "
                                          "(torch.rand(..., generator=generator)).")
    if report := _mask_tokens_across_seeds(cases, outcomes, fail):
        return report
    for case, out in zip(cases, outcomes):
        if case.label.startswith(STATISTICS) and (report := _mask_tokens_statistics(case, *out.value, fail)):
            return report
    return Report(True, f"{item.name}: all {len(cases)} cases pass (invariants and statistics).")


def _mask_tokens_invariants(item: Item, case: Case, out, where: str, fail) -> Report | None:
    """The first rule of BERT's corruption that one outcome breaks, as a failed Report; else None."""
    if out.error is not None:
        return Report(False, f"{item.name} does not run yet.\n{where}: {out.error}")
    if out.mutated:
        return fail("in_place", f"{where}: {item.name} changed input_ids in place; work on a copy "
                                f"(input_ids.clone()).")
    ids, mask_id, vocab, special = case.args
    value = out.value
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(t, torch.Tensor) for t in value)):
        return Report(False, f"{where}: {item.name} should return a tuple (inputs, labels) of tensors; "
                             f"it returned {describe(value)}")
    for name, t in zip(("inputs", "labels"), value):
        if t.shape != ids.shape or t.dtype != ids.dtype or t.device != ids.device:
            return Report(False, f"{where}: {name} should be shaped and typed like input_ids, {tuple(ids.shape)} "
                                 f"{ids.dtype} on {ids.device}; got {describe(t)}")
    inputs, labels = value
    chosen = labels != -100
    p = case.kwargs["mlm_probability"]
    if ids.numel() > 1 and p < 1 and chosen.all():
        return fail("labels", f"{where}: no label is -100; labels must be -100 wherever a token was not chosen")
    if (chosen & (labels != ids)).any():
        return fail("labels", f"{where}: labels must hold the original token where a token was chosen and -100 "
                              f"everywhere else; found labels that are neither")
    changed = inputs != ids   # before the special tokens: "chosen" is read from the labels, so they come first
    if (changed & ~chosen).any():
        if chosen.any() and not (changed & chosen).any():
            return fail("labels", f"{where}: none of the {int(changed.sum())} tokens you changed has a label, and "
                                  f"{int(chosen.sum())} tokens you left as they were have one: your labels look "
                                  f"inverted (-100 where a token was chosen)")
        return fail("labels", f"{where}: a token was changed but its label is -100; every changed token must be "
                              f"one of the chosen ones (label = the original token)")
    is_special = torch.isin(ids, torch.tensor(special, dtype=ids.dtype, device=ids.device))
    if (chosen & is_special).any():
        return fail("special_chosen", f"{where}: a special token ({', '.join(map(str, special))}) was chosen "
                                      f"for prediction; special tokens are never chosen")
    if ((inputs < 0) | (inputs >= vocab)).any():
        return fail(None, f"{where}: inputs hold token ids outside [0, vocab_size = {vocab})")
    eligible = ~is_special
    if p in (0.0, 1.0) and not torch.equal(chosen, eligible & (p == 1.0)):
        return fail("probability", f"{where}: with mlm_probability = {p} {'every' if p else 'no'} word must be "
                                   f"chosen; {int(chosen.sum())} of {int(eligible.sum())} were")
    return None


def _mask_tokens_statistics(case: Case, inputs: torch.Tensor, labels: torch.Tensor, fail) -> Report | None:
    """The first statistic of one large case that is off by more than 6 sigma, as a failed Report; else None."""
    ids, mask_id, vocab, special = case.args
    eligible = ~torch.isin(ids, torch.tensor(special, dtype=ids.dtype, device=ids.device))
    chosen = labels != -100
    p = case.kwargs["mlm_probability"]
    checks = []  # (observed, expected, number of draws, what, mistake key)
    T = ids.size(-1)
    for q in range(4):  # chosen uniformly along the sequence, not e.g. the first 15 % of each row
        part = eligible[..., q * T // 4:(q + 1) * T // 4]
        frac = chosen[..., q * T // 4:(q + 1) * T // 4][part].float().mean().item()
        checks.append((frac, p, int(part.sum()), f"the fraction chosen in quarter {q + 1} of the sequence",
                       "positions"))
    checks.append((chosen[eligible].float().mean().item(), p, int(eligible.sum()), "the fraction of words chosen",
                   "probability"))
    for lag in range(1, LAGS + 1):   # chosen independently: not a pattern, however it is shifted
        both = eligible[..., :-lag] & eligible[..., lag:]
        together = (chosen[..., :-lag] & chosen[..., lag:])[both].float().mean().item()
        # pairs j, j + lag and j + lag, j + 2 lag share a token: their covariance p^3 - p^4 widens the spread
        checks.append((together, p * p, int(both.sum()) / (1 + 2 * p / (1 + p)),
                       f"the fraction of pairs of words {lag} apart that are both chosen", "positions"))
    n = int(chosen.sum())
    became_mask = (inputs[chosen] == mask_id).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    checks += [(became_mask, 0.8 + 0.1 / vocab, n, "the share of chosen words replaced by [MASK]", "split"),
               (kept, 0.1 + 0.1 / vocab, n, "the share of chosen words left unchanged", "split")]
    for observed, expected, count, what, key in checks:
        sigma = math.sqrt(expected * (1 - expected) / count)
        if abs(observed - expected) > 6 * sigma:
            return fail(key, f"{case.label}: {what} is {observed:.2%}; expected {expected:.2%} "
                             f"(± {6 * sigma:.2%} allows for chance)")
    replaced = inputs[chosen & (inputs != mask_id) & (inputs != ids)].double()
    spread = 6 * vocab / math.sqrt(12 * max(1, replaced.numel()))   # 6 sigma of the mean of uniform draws
    if replaced.numel() and abs(replaced.mean().item() - (vocab - 1) / 2) > spread:
        return fail("random_range", f"{case.label}: the random replacement tokens average "
                                    f"{replaced.mean().item():.1f}; tokens drawn uniformly from [0, {vocab}) average "
                                    f"{(vocab - 1) / 2:.1f}")
    return None


def _mask_tokens_across_seeds(cases: Sequence[Case], outcomes: Sequence, fail) -> Report | None:
    """On one input_ids called with many generator seeds (the ACROSS_SEEDS cases): no two seeds may give the
    same result, and every position must be chosen (with mlm_probability 1.0: become [MASK], stay unchanged)
    at the same rate across the seeds (that this rate is the stated one is the large batch's test): a pattern
    fixed by position fails however well its rates are tuned, because its per-position counts are 0 or SEEDS
    instead of binomial. The test is a chi-square of the counts at 8 sigma (its right tail is heavier than a normal one: a correct solution exceeds 5 sigma about once in
    50 000 runs; a positional rule is hundreds of sigma off)."""
    runs: dict[tuple, list[tuple[Case, tuple]]] = {}
    for case, out in zip(cases, outcomes):
        if case.label.startswith(ACROSS_SEEDS):
            ids = case.args[0]
            runs.setdefault((case.kwargs["mlm_probability"], tuple(ids.shape), tuple(ids.flatten().tolist())),
                            []).append((case, out.value))
    for (p, _, _), run in runs.items():
        for i, (case, (inputs, labels)) in enumerate(run if p < 1 else ()):   # with p = 1 only the split is random
            for other, (inputs2, labels2) in run[i + 1:]:
                if torch.equal(inputs, inputs2) and torch.equal(labels, labels2):
                    seeds = [c.kwargs["generator"].initial_seed() for c in (case, other)]
                    return fail("same_for_every_seed",
                                f"{case.label.removeprefix(ACROSS_SEEDS).rsplit(', generator', 1)[0]}, generator "
                                f"seeded with {seeds[0]} and with {seeds[1]}: your mask_tokens gives the same tokens "
                                f"for different generator seeds: draw the random numbers from `generator`.")
        if len(run) < 2:
            continue
        ids, mask_id, vocab, special = run[0][0].args
        eligible = ~torch.isin(ids, torch.tensor(special, dtype=ids.dtype, device=ids.device))
        chosen = torch.stack([labels != -100 for _, (_, labels) in run])[:, eligible].cpu()
        inputs = torch.stack([inputs for _, (inputs, _) in run])[:, eligible].cpu()
        counts = [(chosen, "chosen", "positions")] if p < 1 else [
            (inputs == mask_id, "replaced by [MASK]", "split"), (inputs == ids[eligible].cpu(), "left unchanged", "split")]
        for happened, what, key in counts:
            rate = happened.double().mean().item()   # its level is the large batch's test; here: the same everywhere
            if 0 < rate < 1 and (sigmas := _spread_beyond_chance(happened.sum(0), len(run), rate)) > 8:
                return fail(key, f"input_ids {tuple(ids.shape)} with mlm_probability {p} and {len(run)} generator "
                                 f"seeds: some "
                                 f"positions are {what} far more often than others ({sigmas:.0f} sigma beyond "
                                 f"chance); each token must be {what} with the same probability, from numbers drawn "
                                 f"from `generator`, not by its position.")
    return None


def _spread_beyond_chance(counts: torch.Tensor, draws: int, rate: float) -> float:
    """How many sigma the chi-square of per-position counts exceeds its mean, if each count is Binomial(draws,
    rate) (exact mean n and variance n (2 + (1 - 6 r (1 - r)) / (draws r (1 - r))) over n positions)."""
    spread = draws * rate * (1 - rate)
    n = counts.numel()
    chi2 = ((counts.double() - draws * rate) ** 2 / spread).sum().item()
    return (chi2 - n) / math.sqrt(n * (2 + (1 - 6 * rate * (1 - rate)) / spread))


def _draws(input_ids, vocab_size, generator, low=0):
    """The three random draws of the reference's process, in its order: whether to choose (uniform), what to do
    with a chosen token (uniform: < 0.8 mask, < 0.9 random, else keep), and the random token ids."""
    return (torch.rand(input_ids.shape, generator=generator), torch.rand(input_ids.shape, generator=generator),
            torch.randint(low, vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype))


def _special(input_ids, special_token_ids):
    return torch.isin(input_ids, torch.tensor(special_token_ids, dtype=input_ids.dtype))


def _corrupt(inputs, chosen, action, random_ids, mask_token_id, to_mask=0.8, to_random=0.9):
    """Write [MASK] / random ids into `inputs` (in place) where chosen, by `action`; return inputs."""
    inputs[chosen & (action < to_mask)] = mask_token_id
    replace = chosen & (action >= to_mask) & (action < to_random)
    inputs[replace] = random_ids[replace]
    return inputs


def _mt_special_chosen(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15, generator=None):
    u, action, random_ids = _draws(input_ids, vocab_size, generator)
    chosen = u < mlm_probability
    return (_corrupt(input_ids.clone(), chosen, action, random_ids, mask_token_id),
            torch.where(chosen, input_ids, -100))


def _mt_all_masked(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15, generator=None):
    u, action, random_ids = _draws(input_ids, vocab_size, generator)
    chosen = (u < mlm_probability) & ~_special(input_ids, special_token_ids)
    return (_corrupt(input_ids.clone(), chosen, action, random_ids, mask_token_id, to_mask=1.0, to_random=1.0),
            torch.where(chosen, input_ids, -100))


def _mt_split_10_of_rest(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                         generator=None):
    u, action, random_ids = _draws(input_ids, vocab_size, generator)
    chosen = (u < mlm_probability) & ~_special(input_ids, special_token_ids)
    return (_corrupt(input_ids.clone(), chosen, action, random_ids, mask_token_id, to_random=0.82),
            torch.where(chosen, input_ids, -100))


def _mt_labels_everywhere(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                          generator=None):
    u, action, random_ids = _draws(input_ids, vocab_size, generator)
    chosen = (u < mlm_probability) & ~_special(input_ids, special_token_ids)
    return _corrupt(input_ids.clone(), chosen, action, random_ids, mask_token_id), input_ids.clone()


def _mt_global_rng(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15, generator=None):
    u, action, random_ids = _draws(input_ids, vocab_size, None)
    chosen = (u < mlm_probability) & ~_special(input_ids, special_token_ids)
    return (_corrupt(input_ids.clone(), chosen, action, random_ids, mask_token_id),
            torch.where(chosen, input_ids, -100))


def _mt_fixed_seed(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15, generator=None):
    torch.manual_seed(0)   # reproducible, but the same for every generator
    return _mt_global_rng(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability)


def _mt_in_place(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15, generator=None):
    u, action, random_ids = _draws(input_ids, vocab_size, generator)
    chosen = (u < mlm_probability) & ~_special(input_ids, special_token_ids)
    labels = torch.where(chosen, input_ids, -100)
    return _corrupt(input_ids, chosen, action, random_ids, mask_token_id), labels


def _mt_first_positions(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                        generator=None):
    _, action, random_ids = _draws(input_ids, vocab_size, generator)
    position = torch.linspace(0, 1, input_ids.size(-1)).expand(input_ids.shape)  # the first p of every row
    chosen = (position < mlm_probability) & ~_special(input_ids, special_token_ids)
    return (_corrupt(input_ids.clone(), chosen, action, random_ids, mask_token_id),
            torch.where(chosen, input_ids, -100))


def _mt_shifted_pattern(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                        generator=None):
    _, action, random_ids = _draws(input_ids, vocab_size, generator)
    shift = torch.rand((), generator=generator, dtype=torch.float64) * 1e6   # one draw moves a fixed pattern
    position = torch.frac((torch.arange(input_ids.numel(), dtype=torch.float64) + shift) * 0.6180339887498949)
    chosen = (position.reshape(input_ids.shape) < mlm_probability) & ~_special(input_ids, special_token_ids)
    return (_corrupt(input_ids.clone(), chosen, action, random_ids, mask_token_id),
            torch.where(chosen, input_ids, -100))


def _mt_narrow_random_range(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                            generator=None):
    u, action, random_ids = _draws(input_ids, vocab_size, generator, low=vocab_size - 5)
    chosen = (u < mlm_probability) & ~_special(input_ids, special_token_ids)
    return (_corrupt(input_ids.clone(), chosen, action, random_ids, mask_token_id),
            torch.where(chosen, input_ids, -100))


_SPLIT = ("the 80/10/10 split is wrong: of the chosen tokens 80% become [MASK], 10% a random token and 10% stay "
          "unchanged (draw one uniform number per token: < 0.8 mask, < 0.9 random, else keep).")

_POSITIONS = ("which tokens are chosen depends on their position (the first ones of a row, or a pattern, fixed or "
              "moved by one random number); choose each token independently with probability mlm_probability: "
              "torch.rand(input_ids.shape, generator=generator) < mlm_probability.")

MASK_TOKENS = Item(
    "mask_tokens", ASSIGNMENT, "function", _mask_tokens_cases, Reference("bert", "mask_tokens"),
    BERT_SHORTCUTS, outputs=("inputs", "labels"), compare_fn=_mask_tokens_compare,
    mistakes=(
        Mistake("special_chosen", "special tokens ([CLS], [SEP], [PAD], ...) can be chosen; exclude every id in "
                "special_token_ids before choosing (torch.isin).", _mt_special_chosen),
        Mistake("split", _SPLIT, _mt_all_masked),
        Mistake("split", _SPLIT, _mt_split_10_of_rest),
        Mistake("labels", "labels must be the original token where a token was chosen and -100 everywhere else (so "
                "that the loss ignores the other positions).", _mt_labels_everywhere),
        Mistake("global_rng", "the random numbers do not come from `generator`; pass generator=generator to "
                "torch.rand / torch.randint so that results are reproducible.", _mt_global_rng),
        Mistake("same_for_every_seed", "the random numbers do not come from `generator` (a torch.manual_seed or "
                "random.seed inside the function, or no random draw at all); draw every one from it: "
                "torch.rand(..., generator=generator), torch.randint(..., generator=generator).", _mt_fixed_seed),
        Mistake("in_place", "input_ids is modified in place; corrupt a copy (input_ids.clone()).", _mt_in_place),
        Mistake("positions", _POSITIONS, _mt_first_positions),
        Mistake("positions", _POSITIONS, _mt_shifted_pattern),
        Mistake("random_range", "random replacement tokens must be drawn uniformly from the whole vocabulary, "
                "torch.randint(vocab_size, ...).", _mt_narrow_random_range),
    ),
    hints=("BERT's masking: choose each non-special token with probability mlm_probability; of the chosen, 80% become "
           "the mask token, 10% a random token, 10% stay. Labels: the original id where chosen, -100 elsewhere.",
           "Draw every random number from `generator`, on input_ids' device: one uniform draw per token decides "
           "'chosen' (never a special token: torch.isin), a second one decides mask / random / keep (< 0.8, < 0.9, "
           "else); build the inputs and the labels with torch.where."))


def check_mask_tokens(impl, seeds=(0,), cuda=False) -> None:
    """Check a submission of mask_tokens(input_ids, mask_token_id, vocab_size, special_token_ids,
    mlm_probability=0.15, generator=None): its output is random, so each case checks BERT's rules exactly (labels,
    special tokens, mlm_probability 0 and 1, the same result for the same generator seed), one input_ids with 32
    generator seeds checks that the seeds give different results at the stated rates for every position, and a
    large batch checks the 15% / 80-10-10 statistics and that tokens are chosen independently of each other (CUDA copies when cuda=True and a GPU is present); raise CheckFailed with what
    was expected, what came back and the likely mistake."""
    assert_passes(MASK_TOKENS, impl, seeds, cuda)


# ---------------------------------------------------------------- BertEmbeddings

def _bert_embeddings_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, B: int, T: int, vocab: int, d: int, max_len: int, types: int, group: str,
             segments: bool = True, dtype: torch.dtype = torch.float32, default_device: str | None = None) -> Case:
        state = {"word_embeddings.weight": randn(g, vocab, d, dtype=dtype),
                 "position_embeddings.weight": randn(g, max_len, d, dtype=dtype),
                 "token_type_embeddings.weight": randn(g, types, d, dtype=dtype), **norm_state(g, d, dtype)}
        ids = torch.randint(0, vocab, (B, T), generator=g)
        token_types = (torch.arange(T) >= torch.randint(1, T + 1, (B, 1), generator=g)).long()
        return Case(label, (ids, token_types if segments else None), {},
                    {"vocab_size": vocab, "d_model": d, "max_len": max_len, "type_vocab_size": types}, state,
                    group=group, default_device=default_device)
    return [case("input_ids (2, 7), segments A then B", 2, 7, 20, 8, 10, 2, "basic shapes"),
            case("batch 1, one token", 1, 1, 5, 4, 3, 2, "basic shapes"),
            case("token_type_ids None (all segment A)", 3, 5, 11, 6, 5, 2, "token_type_ids None", segments=False),
            case("float64 parameters, input_ids (2, 4)", 2, 4, 9, 5, 6, 3, "float64", dtype=torch.float64),
            case("input_ids (2, 6), default device meta", 2, 6, 12, 4, 8, 2, "new tensors on input_ids' device",
                 segments=False, default_device="meta")]


class _BertEmbeddingsMistake(nn.Module):
    """The members of BertEmbeddings; each subclass combines the three embeddings wrongly in its forward."""

    def __init__(self, vocab_size, d_model, max_len, type_vocab_size):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, d_model)
        self.position_embeddings = nn.Embedding(max_len, d_model)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, d_model)
        self.norm = nn.LayerNorm(d_model, eps=1e-12)

    def parts(self, input_ids, token_type_ids, first_position=0):
        """The word (B, T, d), position (T, d) and segment (B, T, d) embeddings."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        T = input_ids.size(1)
        positions = torch.arange(first_position, first_position + T, device=input_ids.device)
        positions = positions.clamp_max(self.position_embeddings.num_embeddings - 1)
        return (self.word_embeddings(input_ids), self.position_embeddings(positions),
                self.token_type_embeddings(token_type_ids))


class _BertNoNorm(_BertEmbeddingsMistake):
    def forward(self, input_ids, token_type_ids=None):
        words, positions, segments = self.parts(input_ids, token_type_ids)
        return words + positions + segments


class _BertNoPosition(_BertEmbeddingsMistake):
    def forward(self, input_ids, token_type_ids=None):
        words, _, segments = self.parts(input_ids, token_type_ids)
        return self.norm(words + segments)


class _BertNoSegment(_BertEmbeddingsMistake):
    def forward(self, input_ids, token_type_ids=None):
        words, positions, _ = self.parts(input_ids, token_type_ids)
        return self.norm(words + positions)


class _BertPositionsFrom1(_BertEmbeddingsMistake):
    def forward(self, input_ids, token_type_ids=None):
        words, positions, segments = self.parts(input_ids, token_type_ids, first_position=1)
        return self.norm(words + positions + segments)


class _BertNormWordsOnly(_BertEmbeddingsMistake):
    def forward(self, input_ids, token_type_ids=None):
        words, positions, segments = self.parts(input_ids, token_type_ids)
        return self.norm(words) + positions + segments


BERT_EMBEDDINGS = Item(
    "BertEmbeddings", ASSIGNMENT, "class", _bert_embeddings_cases, Reference("bert", "BertEmbeddings"),
    BERT_SHORTCUTS, outputs=("embeddings",),
    members="word_embeddings, position_embeddings, token_type_embeddings (nn.Embedding) and norm (a LayerNorm with "
            "weight and bias, eps 1e-12)",
    mistakes=(
        Mistake("no_norm", "the LayerNorm is missing: LayerNorm(token + position + segment embeddings).", _BertNoNorm),
        Mistake("no_position", "the position embeddings are missing (position_embeddings(arange(T))).",
                _BertNoPosition),
        Mistake("no_segment", "the segment (token type) embeddings are missing.", _BertNoSegment),
        Mistake("positions_from_1", "your positions start at 1; the first token has position 0.", _BertPositionsFrom1),
        Mistake("norm_words_only", "you normalised only the word embeddings; the LayerNorm acts on the sum of all "
                "three.", _BertNormWordsOnly),
    ), explain=explain_layer,
    hints=("BERT's input is the sum of three embeddings of each token (its word, its position, its segment) followed "
           "by a LayerNorm with eps 1e-12.",
           "Three nn.Embedding members (vocab_size, max_len and type_vocab_size rows of d_model); the positions are an"
           " arange over T on the ids' device; token_type_ids default to zeros like input_ids; sum the three, then the"
           " LayerNorm."))


def check_BertEmbeddings(impl, seeds=(0,), cuda=False) -> None:
    """Check a submission of the class BertEmbeddings(vocab_size, d_model, max_len, type_vocab_size),
    forward(input_ids, token_type_ids=None), against transformer_ref.bert.BertEmbeddings: its embeddings and norm
    get random parameters, and it runs on several shapes, without token_type_ids, and in float64 (CUDA copies when
    cuda=True and a GPU is present); raise CheckFailed with what was expected, what came back and the likely
    mistake."""
    assert_passes(BERT_EMBEDDINGS, impl, seeds, cuda)


# ---------------------------------------------------------------- masked_lm_loss

def _mlm_loss_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, shape: tuple, vocab: int, keep: float, group: str, dtype: torch.dtype = torch.float32
             ) -> Case:
        logits = randn(g, *shape, vocab, dtype=dtype, scale=2.0)  # (..., vocab)
        labels = torch.randint(0, vocab, shape, generator=g)
        ignored = torch.rand(shape, generator=g) > keep
        ignored.view(-1)[0] = False  # at least one label counts
        return Case(label, (logits, labels.masked_fill(ignored, -100)), group=group)
    return [case("logits (1, 1, 5), one label", (1, 1), 5, 1.0, "every label used"),
            case("logits (3, 4, 7), every label used", (3, 4), 7, 1.0, "every label used"),
            case("logits (2, 6, 11), about 30% of the labels used", (2, 6), 11, 0.3, "some labels -100 (ignored)"),
            case("logits (8, 10) without a batch axis, half the labels used", (8,), 10, 0.5,
                 "some labels -100 (ignored)"),
            case("float64, logits (4, 5, 9)", (4, 5), 9, 0.5, "float64")]


def _masked_lm_loss(logits, labels):
    """The reference: cross-entropy over the positions whose label is not -100 (F.cross_entropy's ignore_index)."""
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten())


def _picked(log_probs, labels):
    """-log_probs at each position's label, 0 where the label is -100: (...,)."""
    used = labels != -100
    return -log_probs.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1) * used


def _mlm_mean_over_all(logits, labels):
    return _picked(torch.log_softmax(logits, dim=-1), labels).sum() / labels.numel()


def _mlm_sum(logits, labels):
    return _picked(torch.log_softmax(logits, dim=-1), labels).sum()


def _mlm_no_log_softmax(logits, labels):
    return _picked(logits, labels).sum() / (labels != -100).sum()


def _mlm_softmax_not_log(logits, labels):
    return _picked(torch.softmax(logits, dim=-1), labels).sum() / (labels != -100).sum()


MASKED_LM_LOSS = Item(
    "masked_lm_loss", ASSIGNMENT, "function", _mlm_loss_cases, lambda: _masked_lm_loss,
    CROSS_ENTROPY_SHORTCUTS + BERT_SHORTCUTS, outputs=("loss",), forbidden_ops=CROSS_ENTROPY_OPS,
    mistakes=(
        Mistake("mean_over_all", "you averaged over every position; average over the positions whose label is not "
                "-100 only.", _mlm_mean_over_all),
        Mistake("sum", "you returned the sum; the loss is the mean over the positions with a label.", _mlm_sum),
        Mistake("no_log_softmax", "the logits are used as log-probabilities; apply log_softmax over the vocabulary "
                "axis first.", _mlm_no_log_softmax),
        Mistake("softmax_not_log", "you used -softmax(logits)[label]; cross-entropy is -log_softmax(logits)[label].",
                _mlm_softmax_not_log),
    ),
    hints=("Cross-entropy averaged over the positions whose label is not -100 (the masked tokens) only; the others do "
           "not count, not even in the denominator.",
           "log_softmax over the vocabulary axis; gather each label's log-probability (give the -100 positions any "
           "valid index first, e.g. clamp at 0, and zero them out after); minus their sum over the number of used "
           "positions."))


def check_masked_lm_loss(impl, seeds=(0,), cuda=False) -> None:
    """Check a submission of masked_lm_loss(logits, labels) against cross-entropy over the positions whose label
    is not -100, on random logits (every label used, some labels -100, no batch axis, float64; CUDA copies when
    cuda=True and a GPU is present); raise CheckFailed with what was expected, what came back and the likely
    mistake."""
    assert_passes(MASKED_LM_LOSS, impl, seeds, cuda)


ITEMS = (MASK_TOKENS, BERT_EMBEDDINGS, MASKED_LM_LOSS)

"""grader.checks.attention_at_scale (11_attention_at_scale): the reference scores full marks, every catalogued
mistake is named, and so is each mistake written the way a student writes it (not the catalogue's own form);
correct alternatives (torch.where, logsumexp, a loop over keys) pass; the shortcuts score 0; partial credit
follows the groups; and in a kernel the released notebook names a student's mistake in six lines."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from grader.checks import attention_at_scale as at_scale
from grader.checks.cases import make_cases
from grader.checks.report import check
from grader.checks.run import run_student
from transformer_ref import tiled_attention
from transformer_ref.kv_cache import KVCache

import checks_contract as contract

ROOT = Path(__file__).resolve().parents[1]
STEP, CACHED = at_scale.ONLINE_SOFTMAX_STEP, at_scale.CACHED_ATTENTION_STEP
ITEMS = at_scale.ITEMS
CHECKS = {STEP: at_scale.check_online_softmax_step, CACHED: at_scale.check_cached_attention_step}

# ---------------------------------------------------------------- valid alternatives: online_softmax_step


def step_where(m, l, acc, scores_tile, v_tile):
    m_new = torch.max(m, scores_tile.max(dim=-1, keepdim=True).values)
    safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
    p = (scores_tile - safe).exp()
    scale = (m - safe).exp()
    return m_new, l * scale + p.sum(-1, keepdim=True), acc * scale + torch.einsum("...qk,...kd->...qd", p, v_tile)


def step_logsumexp(m, l, acc, scores_tile, v_tile):
    """l in log space: log l' = logaddexp(m + log l, logsumexp(tile)) - m'."""
    m_new = torch.maximum(m, scores_tile.amax(-1, keepdim=True))
    seen = m_new > -math.inf
    safe = torch.where(seen, m_new, torch.zeros_like(m_new))
    log_l = torch.logaddexp(m + torch.log(l), torch.logsumexp(scores_tile, -1, keepdim=True))
    l_new = torch.where(seen, torch.exp(log_l - safe), torch.zeros_like(l))
    return m_new, l_new, torch.exp(m - safe) * acc + torch.exp(scores_tile - safe) @ v_tile


def step_nan_to_num(m, l, acc, scores_tile, v_tile):
    m_new = torch.cat([m, scores_tile], dim=-1).amax(dim=-1, keepdim=True)
    p = torch.exp(scores_tile - m_new).nan_to_num(nan=0.0)   # exp(-inf - (-inf)) = NaN -> 0
    c = torch.exp(m - m_new).nan_to_num(nan=0.0)
    return m_new, c * l + p.sum(-1, keepdim=True), c * acc + p @ v_tile


# ---------------------------------------------------------------- valid alternatives: cached_attention_step


def cached_tril(q, k, v, k_cache, v_cache):
    keys, values = torch.cat((k_cache, k), -2), torch.cat((v_cache, v), -2)
    t, n = k_cache.shape[-2], q.shape[-2]
    allowed = torch.ones(n, t + n, dtype=torch.bool, device=q.device).tril(diagonal=t)
    scores = torch.where(allowed, q @ keys.mT / q.shape[-1] ** 0.5, float("-inf"))
    return F.softmax(scores, dim=-1) @ values, keys, values


def cached_finfo_fill(q, k, v, k_cache, v_cache):
    keys = torch.cat([k_cache, k], dim=-2)
    values = torch.cat([v_cache, v], dim=-2)
    T_new, T = q.size(-2), keys.size(-2)
    future = torch.ones(T_new, T, dtype=torch.bool, device=q.device).triu(T - T_new + 1)
    scores = (q @ keys.transpose(-2, -1)).masked_fill(future, torch.finfo(q.dtype).min)
    return torch.softmax(scores / math.sqrt(q.size(-1)), dim=-1) @ values, keys, values


def cached_key_by_key(q, k, v, k_cache, v_cache):
    """The online softmax over the keys one at a time (a decoder built on part 1)."""
    keys, values = torch.cat([k_cache, k], dim=-2), torch.cat([v_cache, v], dim=-2)
    t, T_new = k_cache.size(-2), q.size(-2)
    m = torch.full((*q.shape[:-1], 1), -math.inf, dtype=q.dtype, device=q.device)
    l, acc = torch.zeros_like(m), torch.zeros(*q.shape[:-1], v.size(-1), dtype=q.dtype, device=q.device)
    rows = torch.arange(T_new, device=q.device).unsqueeze(-1)
    for j in range(t + T_new):
        score = q @ keys[..., j:j + 1, :].transpose(-2, -1) / math.sqrt(q.size(-1))   # (..., T_new, 1)
        score = score.masked_fill(j > rows + t, -math.inf)
        m, l, acc = step_where(m, l, acc, score, values[..., j:j + 1, :])
    return acc / l, keys, values


ALTERNATIVES = {STEP: [step_where, step_logsumexp, step_nan_to_num],
                CACHED: [cached_tril, cached_finfo_fill, cached_key_by_key]}

# ---------------------------------------------------------------- shortcuts


def step_package(m, l, acc, scores_tile, v_tile):
    return tiled_attention.online_softmax_step(m, l, acc, scores_tile, v_tile)


def cached_torch(q, k, v, k_cache, v_cache):
    keys, values = torch.cat([k_cache, k], -2), torch.cat([v_cache, v], -2)
    t, T_new = k_cache.size(-2), q.size(-2)
    allowed = torch.ones(T_new, t + T_new, dtype=torch.bool, device=q.device).tril(t)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed), keys, values


def cached_kv_cache(q, k, v, k_cache, v_cache):
    keys, values = KVCache(k_cache, v_cache).update(k, v)
    return cached_tril(q, k, v, k_cache, v_cache)[0], keys, values


SHORTCUTS = [(STEP, step_package, "transformer_ref.tiled_attention.online_softmax_step"),
             (CACHED, cached_torch, "torch.nn.functional.scaled_dot_product_attention"),
             (CACHED, cached_kv_cache, "transformer_ref.kv_cache.KVCache.update")]

# ---------------------------------------------------------------- the contract (tests/checks_contract.py)


def test_the_assignment_has_its_items_groups_mistakes_and_alternatives():
    contract.assert_assignment_shape(at_scale, "11_attention_at_scale", ["online_softmax_step", "cached_attention_step"],
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
def test_cuda_copies_pass_for_the_reference_and_an_alternative(item):
    contract.assert_cuda_copies_pass(item, item.reference(), watch=False)
    contract.assert_cuda_copies_pass(item, ALTERNATIVES[item][0])


# ---------------------------------------------------------------- the cases cover what the items are about


def test_the_step_cases_hold_a_first_tile_a_grown_and_a_kept_max_masked_rows_float64_and_meta():
    cases = make_cases(STEP, 0)
    firsts = [c for c in cases if c.args[0].isneginf().all()]
    assert firsts and all(not c.args[1].any() and not c.args[2].any() for c in firsts)
    later = [c for c in cases if not c.args[0].isneginf().all()]
    grows = [c for c in later if (c.args[3].amax(-1, keepdim=True) > c.args[0]).any()]
    stays = [c for c in later if (c.args[3].amax(-1, keepdim=True) < c.args[0]).any()]
    assert grows and stays and set(map(id, grows)) & set(map(id, stays)), "some tile must have both kinds of rows"
    assert any(c.args[3].isneginf().all(-1).any() for c in later), "a fully masked tile row after seen keys"
    assert any((c.args[0].isneginf() & c.args[3].isneginf().all(-1, keepdim=True)).any() for c in later), \
        "a row that has seen no key and whose tile is all -inf"
    assert {c.args[0].dtype for c in cases} == {torch.float32, torch.float64}
    assert any(c.meta_inputs for c in cases)


def test_the_cached_cases_hold_an_empty_cache_one_and_several_new_positions_float64_and_devices():
    cases = make_cases(CACHED, 0)
    t = [c.args[3].size(-2) for c in cases]
    T_new = [c.args[0].size(-2) for c in cases]
    assert 0 in t and 1 in T_new and any(n > 1 and past > 0 for n, past in zip(T_new, t))
    assert any(c.args[0].dim() == 3 for c in cases) and any(c.args[0].dtype == torch.float64 for c in cases)
    assert any(c.meta_inputs for c in cases) and any(c.default_device == "meta" for c in cases)


# ---------------------------------------------------------------- mistakes as a student writes them
# Each is another way of writing a catalogued mistake (plain torch, the student's own names and order); the
# check names it only because its outputs equal the catalogued one's on every case.


def student_l_not_rescaled(m, l, acc, scores_tile, v_tile):
    m_new = torch.maximum(m, scores_tile.max(dim=-1, keepdim=True).values)
    p = torch.exp(scores_tile - m_new)
    l = l + p.sum(-1, keepdim=True)                         # the old sum, against the old max
    acc = acc * torch.exp(m - m_new) + p @ v_tile
    return m_new, l, acc


def student_acc_not_rescaled(m, l, acc, scores_tile, v_tile):
    m_new = torch.where(scores_tile.amax(-1, keepdim=True) > m, scores_tile.amax(-1, keepdim=True), m)
    shift = torch.where(m_new == float("-inf"), 0.0, m_new)
    p = (scores_tile - shift).exp()
    return m_new, (m - shift).exp() * l + p.sum(-1, keepdim=True), acc + p @ v_tile


def student_nothing_rescaled(m, l, acc, scores_tile, v_tile):
    new_max = torch.max(m, torch.max(scores_tile, dim=-1, keepdim=True)[0])
    weights = torch.exp(scores_tile - new_max)
    return new_max, l + weights.sum(dim=-1, keepdim=True), acc + torch.matmul(weights, v_tile)


def student_tile_max(m, l, acc, scores_tile, v_tile):
    m_new = scores_tile.max(-1, keepdim=True).values       # forgot the running max
    p = torch.exp(scores_tile - m_new)
    c = torch.exp(m - m_new)
    return m_new, c * l + p.sum(-1, keepdim=True), c * acc + p @ v_tile


def student_old_max(m, l, acc, scores_tile, v_tile):
    m2 = torch.maximum(m, scores_tile.amax(-1, keepdim=True))
    p, c = torch.exp(scores_tile - m2), torch.exp(m - m2)
    return m, c * l + p.sum(-1, keepdim=True), c * acc + p @ v_tile


def student_unshifted(m, l, acc, scores_tile, v_tile):
    m_new = torch.maximum(m, scores_tile.amax(-1, keepdim=True))
    l = l + scores_tile.exp().sum(-1, keepdim=True)
    acc = acc + scores_tile.exp() @ v_tile
    return m_new, l, acc


def student_divided_by_l(m, l, acc, scores_tile, v_tile):
    m_new = torch.maximum(m, scores_tile.amax(-1, keepdim=True))
    p = torch.exp(scores_tile - m_new)
    c = torch.exp(m - m_new)
    l_new = c * l + p.sum(-1, keepdim=True)
    return m_new, l_new, (c * acc + p @ v_tile) / l_new    # normalised at every step


def student_rescale_inverted(m, l, acc, scores_tile, v_tile):
    m_new = torch.maximum(m, scores_tile.amax(-1, keepdim=True))
    ref = torch.where(m_new.isinf(), 0.0, m_new)
    c = torch.exp(ref - m)
    p = torch.exp(scores_tile - ref)
    return m_new, c * l + p.sum(-1, keepdim=True), c * acc + p @ v_tile


def student_textbook(m, l, acc, scores_tile, v_tile):
    """Right, but a row with no key yet and an all -inf tile gives NaN."""
    m_new = torch.maximum(m, scores_tile.amax(-1, keepdim=True))
    p = torch.exp(scores_tile - m_new)
    c = torch.exp(m - m_new)
    return m_new, c * l + p.sum(-1, keepdim=True), c * acc + p @ v_tile


def student_attends_old_only(q, k, v, k_cache, v_cache):
    w = torch.softmax(q @ k_cache.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1)
    out = w @ v_cache
    k_cache = torch.cat([k_cache, k], dim=-2)               # appended after attending
    v_cache = torch.cat([v_cache, v], dim=-2)
    return out, k_cache, v_cache


def student_cache_ignored(q, k, v, k_cache, v_cache):
    T = q.size(-2)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device))
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(~causal, float("-inf"))
    return torch.softmax(scores, -1) @ v, torch.cat([k_cache, k], -2), torch.cat([v_cache, v], -2)


def student_cat_not_returned(q, k, v, k_cache, v_cache):
    keys = torch.cat([k_cache, k], dim=-2)
    values = torch.cat([v_cache, v], dim=-2)
    t = k_cache.size(-2)
    mask = torch.ones(q.size(-2), keys.size(-2), dtype=torch.bool, device=q.device).tril(t)
    out = torch.softmax((q @ keys.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(~mask, -math.inf), -1) @ values
    return out, k_cache, v_cache                            # the torch.cat results are not returned


def student_top_left(q, k, v, k_cache, v_cache):
    keys, values = torch.cat([k_cache, k], -2), torch.cat([v_cache, v], -2)
    mask = torch.ones(q.size(-2), keys.size(-2), dtype=torch.bool, device=q.device).tril()   # no offset
    scores = (q @ keys.transpose(-2, -1)) / math.sqrt(q.size(-1))
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ values, keys, values


def student_not_itself(q, k, v, k_cache, v_cache):
    keys, values = torch.cat([k_cache, k], -2), torch.cat([v_cache, v], -2)
    t = k_cache.size(-2)
    i = torch.arange(q.size(-2), device=q.device)[:, None]
    j = torch.arange(keys.size(-2), device=q.device)[None, :]
    scores = (q @ keys.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(j >= i + t, float("-inf"))
    return torch.softmax(scores, -1) @ values, keys, values


def student_offset_before_append(q, k, v, k_cache, v_cache):
    T_q, T_k = q.size(-2), k_cache.size(-2)
    mask = torch.ones(T_q, T_k + T_q, dtype=torch.bool, device=q.device).tril(T_k - T_q)   # T_k read too early
    k_cache, v_cache = torch.cat([k_cache, k], -2), torch.cat([v_cache, v], -2)
    scores = (q @ k_cache.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1) @ v_cache, k_cache, v_cache


def student_unscaled(q, k, v, k_cache, v_cache):
    keys, values = torch.cat([k_cache, k], -2), torch.cat([v_cache, v], -2)
    t = k_cache.size(-2)
    mask = torch.ones(q.size(-2), keys.size(-2), dtype=torch.bool, device=q.device).tril(t)
    return torch.softmax((q @ keys.transpose(-2, -1)).masked_fill(~mask, -math.inf), -1) @ values, keys, values


def student_no_causal(q, k, v, k_cache, v_cache):
    keys, values = torch.cat([k_cache, k], -2), torch.cat([v_cache, v], -2)
    return torch.softmax(q @ keys.transpose(-2, -1) / math.sqrt(q.size(-1)), -1) @ values, keys, values


def student_prepended(q, k, v, k_cache, v_cache):
    keys, values = torch.cat([k, k_cache], -2), torch.cat([v, v_cache], -2)
    t = k_cache.size(-2)
    mask = torch.ones(q.size(-2), keys.size(-2), dtype=torch.bool, device=q.device).tril(t)
    scores = (q @ keys.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1) @ values, keys, values


AS_STUDENTS_WRITE = [
    (STEP, student_l_not_rescaled, "l_not_rescaled"), (STEP, student_acc_not_rescaled, "acc_not_rescaled"),
    (STEP, student_nothing_rescaled, "nothing_rescaled"), (STEP, student_tile_max, "tile_max"),
    (STEP, student_old_max, "old_max"), (STEP, student_unshifted, "unshifted"),
    (STEP, student_divided_by_l, "divided_by_l"), (STEP, student_rescale_inverted, "rescale_inverted"),
    (STEP, student_textbook, "nan_rows"),
    (CACHED, student_attends_old_only, "attends_old_only"), (CACHED, student_cache_ignored, "cache_ignored"),
    (CACHED, student_cat_not_returned, "old_cache_returned"), (CACHED, student_top_left, "top_left"),
    (CACHED, student_not_itself, "not_itself"), (CACHED, student_no_causal, "no_causal"),
    (CACHED, student_prepended, "prepended"), (CACHED, student_offset_before_append, "offset_before_append"),
    (CACHED, student_unscaled, "unscaled"),
]


@pytest.mark.parametrize("item,impl,key", AS_STUDENTS_WRITE, ids=lambda x: getattr(x, "__name__", None))
def test_a_mistake_written_as_a_student_writes_it_is_named(item, impl, key):
    report = check(item, impl)
    assert not report.passed and report.mistake == key, report.message
    assert f"Likely mistake: {contract.mistake(item, key).says}" in report.message, report.message


def test_each_rescaling_mistake_is_named_with_or_without_the_guard_for_rows_with_no_key():
    """Without the unguarded half of each pair, student_l_not_rescaled (no guard: NaN in the row that has seen no
    key) would match no catalogued mistake; with only that half, the guarded form would not."""
    unguarded = check(STEP, student_l_not_rescaled)
    guarded = check(STEP, student_acc_not_rescaled)   # guards with torch.where
    assert unguarded.mistake == "l_not_rescaled" and guarded.mistake == "acc_not_rescaled"
    outcomes = run_student(STEP, student_l_not_rescaled, make_cases(STEP, 0))
    assert any(out.value[1].isnan().any() for out in outcomes if out.value is not None and not out.value[1].is_meta)


def test_two_mistakes_at_once_are_not_named_as_either():
    def tile_max_and_l_not_rescaled(m, l, acc, scores_tile, v_tile):
        m_new = scores_tile.amax(-1, keepdim=True)
        p = torch.exp(scores_tile - m_new)
        return m_new, l + p.sum(-1, keepdim=True), torch.exp(m - m_new) * acc + p @ v_tile
    report = check(STEP, tile_max_and_l_not_rescaled)
    assert not report.passed and report.mistake is None and "Likely mistake" not in report.message, report.message


def test_changing_acc_in_place_is_reported_as_such_not_as_a_mistake():
    def in_place(m, l, acc, scores_tile, v_tile):
        m_new = torch.maximum(m, scores_tile.amax(-1, keepdim=True))
        shift = m_new.nan_to_num(neginf=0.0)
        p, c = torch.exp(scores_tile - shift), torch.exp(m - shift)
        acc *= c
        acc += p @ v_tile
        return m_new, c * l + p.sum(-1, keepdim=True), acc
    report = check(STEP, in_place)
    assert not report.passed and "changed its input acc in place" in report.message, report.message


# ---------------------------------------------------------------- partial credit and the device


def test_grade_a_missing_rescale_passes_only_the_first_tile():
    result = contract.graded(STEP, student_l_not_rescaled)
    assert {g.group: g.passed for g in result.groups} == {
        "the first tile (m = -inf, l = 0, acc = 0)": True, "a later tile: the max grows or stays": False,
        "masked scores (-inf) and float64": False, "inputs on another device": True}
    assert result.fraction == pytest.approx(1 / 2) and result.mistake == "l_not_rescaled"


def test_grade_the_textbook_formula_loses_only_the_masked_group_and_is_told_why():
    result = contract.graded(STEP, student_textbook)
    assert [g.group for g in result.groups if not g.passed] == ["masked scores (-inf) and float64"]
    assert result.mistake == "nan_rows" and "NaN" in result.message, result.message


def test_grade_one_token_steps_pass_when_only_several_new_positions_are_wrong():
    result = contract.graded(CACHED, student_no_causal)
    failed = [g.group for g in result.groups if not g.passed]
    assert failed == ["an empty cache or several new positions", "float64 and no head axis",
                      "inputs on another device"], result.message
    assert result.groups[0].passed and result.mistake == "no_causal"


def cached_mask_on_default_device(q, k, v, k_cache, v_cache):
    keys, values = torch.cat([k_cache, k], -2), torch.cat([v_cache, v], -2)
    t = k_cache.size(-2)
    mask = torch.ones(q.size(-2), keys.size(-2), dtype=torch.bool).tril(t)    # no device=
    scores = (q @ keys.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(~mask, -math.inf)
    return torch.softmax(scores, -1) @ values, keys, values


def test_a_mask_made_off_the_inputs_device_fails_the_device_group_only():
    report = check(CACHED, cached_mask_on_default_device)
    assert not report.passed and "meta" in report.message and "device" in report.message, report.message
    result = contract.graded(CACHED, cached_mask_on_default_device)
    assert [g.group for g in result.groups if not g.passed] == ["inputs on another device"], result.message


# ---------------------------------------------------------------- in a kernel: the released notebook


@pytest.mark.slow
def test_the_released_notebook_names_a_students_mistakes_and_sums_up():
    """The released notebook's given cells, then mistakes written as a student writes them (not the catalogue's
    functions: tests/test_student_feedback.py runs those), then the solution; what the test cells print."""
    from test_student_feedback import Kernel, assert_short, cells, flat, given, pass_line, solution

    assignment = "11_attention_at_scale"
    folder = ROOT / "exercises" / assignment
    released, answers = cells(folder / f"{assignment}.ipynb"), cells(ROOT / "solutions" / assignment / f"{assignment}.ipynb")
    kernel = Kernel(folder)
    try:
        for source in given(folder / f"{assignment}.ipynb"):
            assert not kernel.run(source)[1]
        for name in ("online_softmax_step", "cached_attention_step"):   # the stubs as released
            assert not kernel.run(released[name])[1]
        output, _ = kernel.run(released["summary"])
        assert "online_softmax_step" in output and "not done" in output and "0 / 10" in output, output

        student = {"online_softmax_step": (
            "def online_softmax_step(m, l, acc, scores_tile, v_tile):\n"
            "    m_new = torch.maximum(m, scores_tile.amax(-1, keepdim=True))\n"
            "    p = torch.exp(scores_tile - m_new)\n"
            "    l = l + p.sum(-1, keepdim=True)\n"
            "    acc = torch.exp(m - m_new) * acc + p @ v_tile\n"
            "    return m_new, l, acc\n", contract.mistake(STEP, "l_not_rescaled").says),
            "cached_attention_step": (
            "def cached_attention_step(q, k, v, k_cache, v_cache):\n"
            "    keys = torch.cat([k_cache, k], dim=-2)\n"
            "    values = torch.cat([v_cache, v], dim=-2)\n"
            "    w = torch.softmax(q @ keys.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1)\n"
            "    return w @ values, keys, values\n", contract.mistake(CACHED, "no_causal").says)}
        for name, (source, says) in student.items():
            assert not kernel.run(source)[1]
            output, raised = kernel.run(released[f"test_{name}"])
            assert raised and flat(f"Likely mistake: {says}") in flat(output), output
            assert_short(output, name)
            assert not kernel.run(solution(answers[name]))[1]
            output, raised = kernel.run(released[f"test_{name}"])
            assert not raised and pass_line(name).fullmatch(output), output

        assert not kernel.run("scores, v = torch.randn(3, 7), torch.randn(7, 2)\n"
                              "out = tiled_softmax(online_softmax_step, scores, v, block_k=3)\n"
                              "assert torch.allclose(out, torch.softmax(scores, -1) @ v)\n")[1]
        output, _ = kernel.run(released["summary"])
        assert "total" in output and "2 of 2 right" in output and "10 / 10" in output, output
    finally:
        kernel.close()

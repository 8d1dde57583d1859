"""grader/checks/structure.py: what differs between a wrong bool mask and the right one, said exactly.

Directly on hand-made masks (causal_form, describe), then through the checks of 05_masking with masks written
the way students write them, not in the catalogue's form: each is named (or described) by what holds exactly,
compositions are named as both, and nothing is said that the tensors do not show."""

from __future__ import annotations

import pytest
import torch

from grader.checks import masking
from grader.checks.compare import grade
from grader.checks.cases import make_cases
from grader.checks.report import check, for_student
from grader.checks.run import run_student
from grader.checks.structure import causal_form, describe, explain_mask


def tril(T_q, T_k, offset):
    return torch.ones(T_q, T_k, dtype=torch.bool).tril(offset)


def flat(text):
    return " ".join(text.split())


# ---------------------------------------------------------------- causal_form on hand-made masks

SHAPES = [(4, 4), (1, 1), (3, 5), (1, 6)]


def right(shapes=SHAPES):
    return [tril(T_q, T_k, T_k - T_q) for T_q, T_k in shapes]


@pytest.mark.parametrize("student,says", [
    (lambda T_q, T_k: ~tril(T_q, T_k, T_k - T_q), ["inverted"]),
    (lambda T_q, T_k: tril(T_q, T_k, 0), ["aligned top-left"]),
    (lambda T_q, T_k: ~tril(T_q, T_k, 0), ["inverted", "aligned top-left"]),          # composed: named as both
    (lambda T_q, T_k: tril(T_q, T_k, T_q - T_k), ["wrong sign"]),
    (lambda T_q, T_k: tril(T_q, T_k, T_k - T_q + 1), ["one diagonal too far", "key i + 1"]),
    (lambda T_q, T_k: tril(T_q, T_k, T_k - T_q + 2), ["2 diagonals too far"]),
    (lambda T_q, T_k: tril(T_q, T_k, T_k - T_q - 1), ["hides the diagonal"]),
    (lambda T_q, T_k: tril(T_q, T_k, 1), ["aligned top-left", "one diagonal too far"]),
    (lambda T_q, T_k: ~tril(T_q, T_k, -1), ["upper triangle", "aligned top-left"]),   # torch.triu(ones)
])
def test_causal_forms_are_named_by_what_differs_and_compose(student, says):
    said = causal_form(right(), [student(T_q, T_k) for T_q, T_k in SHAPES])
    assert said is not None and all(s in said for s in says), said
    assert ("inverted" in said) == ("inverted" in says), said
    assert ("top-left" in said) == ("aligned top-left" in says), said


def test_no_causal_form_is_claimed_for_a_mask_outside_the_family():
    # right on the diagonal, one stray True far off it: no triangle fits, so nothing is named
    odd = right()
    odd[0] = odd[0].clone()
    odd[0][0, 3] = True
    assert causal_form(right(), odd) is None
    # a padding mask's right masks are all True where keys are real: no causal structure to speak of
    assert causal_form([torch.ones(2, 1, 4, dtype=torch.bool)], [torch.zeros(2, 1, 4, dtype=torch.bool)]) is None


def test_the_causal_part_of_a_decoder_mask_is_read_on_the_real_keys_and_the_padding_apart():
    padded = torch.tensor([[False, False, False, True], [False, False, True, True]])
    causal = tril(4, 4, 0)
    expected = [causal & ~padded[:, None, :]]
    leaky = tril(4, 4, 1)
    said = causal_form(expected, [leaky & ~padded[:, None, :]], [padded])
    assert said.startswith("the causal part:") and "one diagonal too far" in said and "padded" not in said, said
    said = causal_form(expected, [leaky.expand(2, 4, 4)], [padded])
    assert "one diagonal too far" in said and "padded keys are not hidden" in said, said
    garbage = (leaky & ~padded[:, None, :]).clone()
    garbage[0, 0, 3] = True        # the padded column holds neither the right values nor the causal part's
    assert causal_form(expected, [garbage], [padded]) is None


# ---------------------------------------------------------------- describe on one case

def test_describe_the_complement_and_the_transpose():
    e = tril(4, 4, 0)
    assert describe(e, ~e)[0] == "likely" and "inverted" in describe(e, ~e)[1]
    assert describe(e, e.mT)[0] == "likely" and "transposed" in describe(e, e.mT)[1]
    sym = torch.eye(3, dtype=torch.bool)
    assert describe(sym, ~sym)[1].startswith("your mask is inverted")   # the transpose of a symmetric mask is itself


def test_describe_a_single_diagonal_names_which_and_which_way():
    e = tril(5, 5, 0)
    kind, said = describe(e, e | torch.ones(4, dtype=torch.bool).diag_embed(1))
    assert kind == "observed" and "j = i + 1, one above" in said and "True there, where it should be False" in said
    assert "query i also sees key i + 1" in said
    missing = e & ~torch.eye(5, dtype=torch.bool)
    kind, said = describe(e, missing)
    assert "the diagonal j = i" in said and "False there, where it should be True" in said, said


def test_describe_rows_of_padded_queries_and_columns_of_padded_keys():
    padded = torch.tensor([[False, False, True, True], [False, False, False, False]])
    e = tril(4, 4, 0) & ~padded[:, None, :]
    rows_hidden = e & ~padded[:, :, None]
    rows_hidden[0, 2, 1] = False      # not only the padded rows ... of the causal part's shape
    kind, said = describe(e, rows_hidden, padded)
    assert kind == "observed" and "rows of padded queries" in said, said
    keys_seen = e | padded[:, None, :]
    _, said = describe(e, keys_seen, padded)
    assert "columns of padded keys" in said and "True there, where it should be False" in said, said
    two = e.clone()
    two[1, 3, :2] = False
    _, said = describe(e, two)        # no padding known: rows and sequences by number
    assert "columns 0..1 (keys) of sequence 1" in said, said


def test_describe_says_nothing_it_cannot_show():
    g = torch.Generator().manual_seed(0)
    e = torch.rand(2, 5, 5, generator=g) < 0.5
    noisy = e ^ (torch.rand(2, 5, 5, generator=g) < 0.5)
    assert describe(e, noisy) is None


# ---------------------------------------------------------------- through the checks, written as students write

def causal_triu_float(T_q, T_k=None, device=None):
    T_k = T_k or T_q
    return torch.triu(torch.ones(T_q, T_k, device=device), diagonal=1).bool()     # inverted and top-left


def causal_wrong_sign(T_q, T_k=None, device=None):
    T_k = T_k or T_q
    return torch.tril(torch.ones(T_q, T_k, dtype=torch.bool, device=device), diagonal=-(T_k - T_q))


def causal_leaky(T_q, T_k=None, device=None):
    T_k = T_q if T_k is None else T_k
    return torch.ones(T_q, T_k, device=device).tril(1 + T_k - T_q) > 0                # the chapter's classic bug


def causal_arange_lt(T_q, T_k=None, device=None):
    T_k = T_q if T_k is None else T_k
    i, j = torch.arange(T_q, device=device)[:, None], torch.arange(T_k, device=device)
    return j < i                                                                     # no diagonal, top-left


def padding_eq_zero(tokens, pad_id):
    return tokens.eq(0).unsqueeze(-2)                                                 # inverted, pad_id ignored


def padding_last_key_kept(tokens, pad_id):
    mask = (tokens != pad_id).unsqueeze(1)
    return torch.cat([mask[..., :-1], torch.ones_like(mask[..., -1:])], dim=-1)


def decoder_leaky(tokens, pad_id):
    T = tokens.shape[1]
    return (tokens != pad_id)[:, None] & torch.tril(torch.ones(T, T, device=tokens.device), 1).bool()


def decoder_inverted_causal_part(tokens, pad_id):
    T = tokens.shape[1]
    keep = tokens.ne(pad_id).unsqueeze(1).repeat(1, T, 1)
    return keep & torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)


def decoder_leaky_no_padding(tokens, pad_id):
    T = tokens.shape[1]
    return torch.ones(tokens.shape[0], T, T, dtype=torch.bool).tril(1)


STUDENTS = [
    (masking.CAUSAL_MASK, causal_triu_float, "Likely mistake: your mask is inverted", "aligned top-left"),
    (masking.CAUSAL_MASK, causal_wrong_sign, "Likely mistake: the offset has the wrong sign", ""),
    (masking.CAUSAL_MASK, causal_leaky, "Likely mistake: it reaches one diagonal too far", "key i + 1"),
    (masking.CAUSAL_MASK, causal_arange_lt, "Likely mistake: it is aligned top-left", "hides the diagonal"),
    (masking.PADDING_MASK, padding_eq_zero, "Likely mistake: your mask is inverted",
     "you compared with 0 instead of the pad_id argument"),
    (masking.PADDING_MASK, padding_last_key_kept, "What differs: only in the columns of padded keys", ""),
    (masking.DECODER_SELF_ATTENTION_MASK, decoder_leaky, "Likely mistake: the causal part: it reaches one diagonal",
     ""),
    (masking.DECODER_SELF_ATTENTION_MASK, decoder_inverted_causal_part,
     "Likely mistake: the causal part: your mask is inverted", ""),
    (masking.DECODER_SELF_ATTENTION_MASK, decoder_leaky_no_padding, "one diagonal too far",
     "padded keys are not hidden"),
]


@pytest.mark.parametrize("item,impl,first,second", STUDENTS, ids=lambda p: getattr(p, "__name__", None))
def test_student_masks_are_named_or_described_in_the_six_line_view(item, impl, first, second):
    report = check(item, impl)
    assert not report.passed and report.mistake is None, report.message   # no catalogued mistake reproduces it
    shown = flat(for_student(report.message))
    assert first in shown and second in shown, shown
    lines = for_student(report.message).splitlines()
    assert len(lines) <= 6 and all(len(line) <= 80 for line in lines), for_student(report.message)


@pytest.mark.parametrize("item,impl,first,second", STUDENTS[:3], ids=lambda p: getattr(p, "__name__", None))
def test_grading_feedback_carries_the_same_line(item, impl, first, second):
    cases = make_cases(item, 0)
    result = grade(item, cases, run_student(item, impl, cases))
    assert result.fraction < 1 and first in flat(result.message), result.message


def test_explain_is_silent_on_right_masks_and_on_wrong_dtypes():
    item = masking.CAUSAL_MASK
    cases = make_cases(item, 0)
    right_ones = run_student(item, item.reference(), cases, watch=False)
    assert explain_mask(item, cases, right_ones) is None
    floats = run_student(item, lambda T_q, T_k=None, device=None: torch.ones(T_q, T_k or T_q).tril(1), cases,
                         watch=False)
    assert explain_mask(item, cases, floats) is None        # the dtype has its own message


# ---------------------------------------------------------------- in the released notebook, in a kernel

IN_THE_NOTEBOOK = {
    "causal_mask": [
        ("def causal_mask(T_q, T_k=None, device=None):\n"
         "    T_k = T_q if T_k is None else T_k\n"
         "    return torch.triu(torch.ones(T_q, T_k, device=device), diagonal=1).bool()\n",
         ["Likely mistake: your mask is inverted", "aligned top-left"]),
        ("def causal_mask(T_q, T_k=None, device=None):\n"
         "    T_k = T_k or T_q\n"
         "    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(diagonal=-(T_k - T_q))\n",
         ["Likely mistake: the offset has the wrong sign"]),
    ],
    "decoder_self_attention_mask": [
        ("def decoder_self_attention_mask(tokens, pad_id):\n"
         "    T = tokens.size(1)\n"
         "    return padding_mask(tokens, pad_id) & torch.ones(T, T, dtype=torch.bool).tril(1)\n",
         ["Likely mistake: the causal part: it reaches one diagonal too far"]),
    ],
}


@pytest.mark.slow
def test_in_the_released_notebook_masks_are_named_structurally():
    from test_student_feedback import ROOT, Kernel, assert_short, cells, solution
    folder = ROOT / "exercises" / "05_masking"
    released = cells(folder / "05_masking.ipynb")
    answers = cells(ROOT / "solutions" / "05_masking" / "05_masking.ipynb")
    kernel = Kernel(folder)
    try:
        assert not kernel.run(released["imports"])[1]
        assert not kernel.run(solution(answers["padding_mask"]))[1]
        for name, variants in IN_THE_NOTEBOOK.items():
            for source, says in variants:
                assert not kernel.run(source)[1]
                output, raised = kernel.run(released[f"test_{name}"])
                assert raised and all(s in flat(output) for s in says), output
                assert_short(output, name)
    finally:
        kernel.close()


# ---------------------------------------------------------------- the mask that attention weights show

class MHA(torch.nn.Module):
    """A student's multi-head attention; `use_mask` is how it applies the mask it is given."""

    def __init__(self, d_model, num_heads):
        super().__init__()
        self.h = num_heads
        self.W_q, self.W_k, self.W_v, self.W_o = (torch.nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, query, key, value, mask=None):
        def heads(t):
            return t.view(t.size(0), t.size(1), self.h, -1).transpose(1, 2)
        q, k, v = heads(self.W_q(query)), heads(self.W_k(key)), heads(self.W_v(value))
        scores = q @ k.transpose(-2, -1) / q.size(-1) ** 0.5
        if mask is not None:
            scores = scores.masked_fill(~self.use_mask(mask), float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        return self.W_o((weights @ v).transpose(1, 2).reshape(query.shape)), weights

    def use_mask(self, mask):
        return mask[:, None] if mask.dim() == 3 else mask


class MHANotUnsqueezed(MHA):
    def use_mask(self, mask):
        return mask                                   # broadcasts silently when B == H


class MHAInverted(MHA):
    def use_mask(self, mask):
        return ~super().use_mask(mask)                # nn.MultiheadAttention's convention


class MHAInvertedNotUnsqueezed(MHA):
    def use_mask(self, mask):
        return torch.logical_not(mask)


@pytest.mark.parametrize("student,says", [
    (MHANotUnsqueezed, "head h of every sequence uses mask[h]"),
    (MHAInverted, "your mask is inverted"),
    (MHAInvertedNotUnsqueezed, "your mask is inverted"),
])
def test_attention_weights_show_how_the_mask_was_used(student, says):
    from grader.checks import multi_head
    report = check(multi_head.MULTI_HEAD_ATTENTION, student)
    assert not report.passed and report.mistake is None
    shown = flat(for_student(report.message))
    assert "Likely mistake:" in shown and says in shown, shown
    if student is MHAInvertedNotUnsqueezed:
        assert "mask[h]" in shown, shown


def test_right_masking_with_another_mistake_says_nothing_about_the_mask():
    from grader.checks import multi_head

    class MHAScaledByDModel(MHA):
        def forward(self, query, key, value, mask=None):
            output, weights = super().forward(query * 0.5 ** 0.5, key, value, mask)
            return output, weights
    assert check(multi_head.MULTI_HEAD_ATTENTION, MHA).passed
    report = check(multi_head.MULTI_HEAD_ATTENTION, MHAScaledByDModel)
    assert not report.passed and "mask" not in report.message.split("\n", 1)[1].lower().replace("masked row", ""), \
        report.message


def test_a_mask_reading_that_does_not_explain_the_case_shown_is_an_observation():
    from grader.checks import attention

    def scaled_dot_product_attention(q, k, v, mask=None):
        scores = q @ k.transpose(-2, -1)                            # no scaling, and the mask inverted
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        weights = torch.softmax(scores, -1).nan_to_num(0.0)
        return weights @ v, weights
    report = check(attention.SCALED_DOT_PRODUCT_ATTENTION, scaled_dot_product_attention)
    shown = flat(for_student(report.message))
    assert "no mask" in shown and "Likely mistake" not in shown, shown     # the first failing case has no mask
    assert "What differs: besides, on the cases with a mask: your mask is inverted" in shown, shown


def test_nothing_is_said_when_the_case_shown_is_wrong_in_another_way():
    def causal_mask(T_q, T_k=None, device=None):
        T_k = T_q if T_k is None else T_k
        mask = ~torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(T_k - T_q)
        return mask if T_q == 4 else mask[None]          # inverted; the other cases also have a wrong shape
    item = masking.CAUSAL_MASK
    cases = make_cases(item, 0)
    assert explain_mask(item, cases, run_student(item, causal_mask, cases, watch=False)) is not None
    def causal_mask_shape_first(T_q, T_k=None, device=None):
        return causal_mask(T_q, T_k, device)[None] if T_q == 4 else causal_mask(T_q, T_k, device)
    assert explain_mask(item, cases, run_student(item, causal_mask_shape_first, cases, watch=False)) is None

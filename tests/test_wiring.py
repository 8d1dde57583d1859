"""grader/checks/wiring.py: a layer built from sublayers is run with its submodules watched, and the wiring that
differs from the post-LN formula is named. Students' layers written in their own forms (variable names,
keyword arguments, nn.LayerNorm, their own dropout), not the catalogue's classes; correct layers written
differently get no complaint; nothing is said when the submission is not at hand or breaks on the second run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from grader.checks import add_norm, transformer
from grader.checks.cases import make_cases
from grader.checks.report import check, for_student
from grader.checks.run import run_student
from grader.checks.wiring import differences, explain_layer, observe
from transformer_ref.layers import LayerNorm, PositionwiseFeedForward
from transformer_ref.multihead import MultiHeadAttention

ROOT = Path(__file__).resolve().parents[1]


def flat(text):
    return " ".join(text.split())


class Decoder(nn.Module):
    """The members a student declares, with nn.LayerNorm and one dropout of their own."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.cross_attn = MultiHeadAttention(d_model, num_heads)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)


class NormBeforeAdd(Decoder):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        tgt = x + self.norm1(self.drop(self.self_attn(x, x, x, mask=self_mask)[0]))
        tgt = self.norm2(tgt + self.cross_attn(tgt, memory, memory, memory_mask)[0])
        return self.norm3(tgt + self.feed_forward(tgt))


class Norm1Twice(Decoder):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        a = self.norm1(x + self.self_attn(x, x, x, self_mask)[0])
        b = self.norm2(a + self.cross_attn(a, memory, memory, memory_mask)[0])
        return self.norm1(b + self.feed_forward(b))


class QueriesFromMemory(Decoder):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        h = self.norm1(x + self.self_attn(query=x, key=x, value=x, mask=self_mask)[0])
        ctx, _ = self.cross_attn(query=memory, key=h, value=h)
        ctx = ctx[:, :h.size(1)] if ctx.size(1) >= h.size(1) else torch.cat([ctx, h[:, ctx.size(1):]], 1)
        h = self.norm2(h + ctx)
        return self.norm3(h + self.feed_forward(h))


class CrossReadsInput(Decoder):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        out = self.norm1(x + self.self_attn(x, x, x, self_mask)[0])
        out = self.norm2(out + self.cross_attn(x, memory, memory, memory_mask)[0])
        return self.norm3(out + self.feed_forward(out))


class NoResidualCross(Decoder):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        y = self.norm1(x + self.self_attn(x, x, x, self_mask)[0])
        y = self.norm2(self.drop(self.cross_attn(y, memory, memory, memory_mask)[0]))
        return self.norm3(y + self.feed_forward(y))


class CrossMaskOmitted(Decoder):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        y = self.norm1(x + self.self_attn(x, x, x, self_mask)[0])
        y = self.norm2(y + self.cross_attn(y, memory, memory)[0])
        return self.norm3(y + self.feed_forward(y))


STUDENTS = [
    (NormBeforeAdd, "norm1 is applied to self_attn's output before the residual add"),
    (Norm1Twice, "norm1 is called twice (the formula: once) and norm3 is never called"),
    (QueriesFromMemory, "cross_attn gets query = the encoder memory, key = value = norm1's output; it should get "
                        "query = norm1's output, key = value = the encoder memory"),
    (CrossReadsInput, "cross_attn's query is the layer input x; it should be norm1's output"),
    (NoResidualCross, "norm2's input is cross_attn's output; it should be norm1's output + cross_attn's output "
                      "(a residual sum)"),
    (CrossMaskOmitted, "cross_attn's mask is None; it should be memory_mask"),
]


@pytest.mark.parametrize("student,says", STUDENTS, ids=lambda p: getattr(p, "__name__", None))
def test_decoder_wiring_is_named_in_the_six_line_view(student, says):
    report = check(transformer.DECODER_LAYER, student)
    assert not report.passed and report.mistake is None, report.message   # no catalogued mistake reproduces it
    shown = for_student(report.message)
    assert f"What differs: {says}" in flat(shown), shown
    assert "Likely mistake" not in shown, shown          # observed, not a proven diagnosis
    lines = shown.splitlines()
    assert len(lines) <= 6 and all(len(line) <= 80 for line in lines), shown


class Encoder(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff)
        self.norm1, self.norm2 = LayerNorm(d_model), LayerNorm(d_model)


class EncoderSecondNormOnInput(Encoder):
    def forward(self, x, mask=None):
        attended = self.norm1(x + self.self_attn(x, x, x, mask)[0])
        return self.norm2(x + self.feed_forward(attended))


class EncoderRight(Encoder):
    """Correct, written differently: the blocks as a loop over (norm, sublayer) pairs, keyword arguments."""

    def forward(self, x, mask=None):
        blocks = ((self.norm1, lambda t: self.self_attn(query=t, key=t, value=t, mask=mask)[0]),
                  (self.norm2, lambda t: self.feed_forward.forward(t)))
        for layer_norm, sublayer in blocks:
            x = layer_norm(sublayer(x) + x)
        return x


class DecoderRight(Decoder):
    """Correct, written differently: other names, keyword arguments, its own dropout, .forward called directly."""

    def forward(self, tgt, enc, self_mask=None, memory_mask=None):
        sa, _ = self.self_attn.forward(tgt, tgt, tgt, self_mask)
        tgt = self.norm1(self.drop(sa) + tgt)
        ca = self.cross_attn(key=enc, value=enc, query=tgt, mask=memory_mask)[0]
        tgt = self.norm2(tgt + self.drop(ca))
        return self.norm3(tgt + self.drop(self.feed_forward(tgt)))


def test_encoder_wiring_is_named():
    report = check(transformer.ENCODER_LAYER, EncoderSecondNormOnInput)
    assert report.mistake is None
    assert "What differs: norm2's input is x + feed_forward's output (a residual sum); it should be " \
           "norm1's output + feed_forward's output" in flat(report.message), report.message


@pytest.mark.parametrize("item,right", [(transformer.ENCODER_LAYER, EncoderRight),
                                        (transformer.DECODER_LAYER, DecoderRight)])
def test_correct_layers_written_differently_pass_and_their_record_matches_the_reference(item, right):
    assert check(item, right).passed
    reference = item.reference()
    for case in make_cases(item, 0):
        assert differences(observe(item, reference, case, reference), observe(item, right, case, reference)) == []


def test_the_checks_own_correct_alternatives_leave_the_same_record_as_the_reference():
    import test_checks_add_norm
    import test_checks_transformer
    for item, impls in [*test_checks_transformer.ALTERNATIVES.items(), *test_checks_add_norm.ALTERNATIVES.items()]:
        if item.explain is not explain_layer:
            continue
        reference = item.reference()
        for impl in impls:
            for case in make_cases(item, 0):
                right, theirs = observe(item, reference, case, reference), observe(item, impl, case, reference)
                assert differences(right, theirs) == [], (item.name, impl.__name__, case.label)


def test_a_record_names_inputs_calls_and_residual_sums():
    item = transformer.DECODER_LAYER
    reference = item.reference()
    case = make_cases(item, 0)[2]                       # with both masks
    record = observe(item, reference, case, reference)
    assert [c.name for c in record.calls] == ["self_attn", "norm1", "cross_attn", "norm2", "feed_forward", "norm3"]
    cross = record.calls[2].inputs
    assert (cross["query"], cross["key"], cross["value"], cross["mask"]) == ("norm1", "memory", "memory",
                                                                             "memory_mask")
    assert record.calls[3].inputs["x"] == "norm1 + cross_attn" and record.output == "norm3"


def test_add_norm_wiring_is_named():
    class AddNorm(nn.Module):
        def __init__(self, d_model, dropout=0.0):
            super().__init__()
            self.norm, self.dropout = nn.LayerNorm(d_model), nn.Dropout(dropout)

        def forward(self, x, sublayer_out):
            return self.norm(x) + sublayer_out
    report = check(add_norm.ADD_NORM, AddNorm)
    assert report.mistake is None
    assert "What differs: norm's input is the layer input x; it should be x + sublayer_out" in flat(report.message)


def test_nothing_is_said_without_the_submission_or_when_it_breaks_on_the_second_run():
    item = transformer.DECODER_LAYER
    cases = make_cases(item, 0)
    outcomes = run_student(item, CrossReadsInput, cases, watch=False)
    assert explain_layer(item, cases, outcomes, None) is None     # the batch grader: outcomes only
    calls = []

    class Flaky(CrossReadsInput):
        def forward(self, *args, **kwargs):
            calls.append(1)
            if len(calls) > len(cases):
                raise RuntimeError("only once")
            return super().forward(*args, **kwargs)
    outcomes = run_student(item, Flaky, cases, watch=False)
    assert explain_layer(item, cases, outcomes, Flaky) is None


# ---------------------------------------------------------------- differences below the printed digits

class BertEmbeddingsTorchLN(nn.Module):
    """Right but for nn.LayerNorm's default eps (1e-5; BERT's is 1e-12): every printed digit agrees."""

    eps = 1e-5

    def __init__(self, vocab_size, d_model, max_len, type_vocab_size):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, d_model)
        self.position_embeddings = nn.Embedding(max_len, d_model)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, d_model)
        self.norm = nn.LayerNorm(d_model, eps=self.eps)

    def forward(self, input_ids, token_type_ids=None):
        segments = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.norm(self.word_embeddings(input_ids) + self.position_embeddings(positions)
                         + self.token_type_embeddings(segments))


class OwnNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d)), eps

    def forward(self, x):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias


class BertEmbeddingsOwnNorm(BertEmbeddingsTorchLN):
    def __init__(self, vocab_size, d_model, max_len, type_vocab_size):
        super().__init__(vocab_size, d_model, max_len, type_vocab_size)
        self.norm = OwnNorm(d_model)


class BertEmbeddingsNudged(BertEmbeddingsTorchLN):
    """eps right, but a tiny shift no eps explains."""

    eps = 1e-12

    def forward(self, input_ids, token_type_ids=None):
        return super().forward(input_ids, token_type_ids) + 1e-6


@pytest.mark.parametrize("student,eps", [(BertEmbeddingsTorchLN, "1e-05"), (BertEmbeddingsOwnNorm, "1e-06")])
def test_an_eps_below_the_printed_digits_is_named_with_enough_digits(student, eps):
    from grader.checks import bert
    report = check(bert.BERT_EMBEDDINGS, student)
    shown = for_student(report.message)
    said = flat(shown)
    assert f"Likely mistake: your LayerNorm's eps is {eps}, the exercise's 1e-12" in said, shown
    expected, got = re.search(r"expected (-?[\d.]+), got (-?[\d.]+) \(tolerance", said).groups()
    assert expected != got and "tolerance" in said, shown
    lines = shown.splitlines()
    assert len(lines) <= 6 and all(len(line) <= 80 for line in lines), shown


def test_a_tiny_difference_no_eps_explains_is_shown_in_digits_only():
    from grader.checks import bert
    report = check(bert.BERT_EMBEDDINGS, BertEmbeddingsNudged)
    said = flat(for_student(report.message))
    assert "What differs: below the printed digits" in said and "eps" not in said, said


def test_an_encoder_layer_with_another_eps_is_named():
    class EncoderEps(EncoderRight):
        def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
            super().__init__(d_model, num_heads, d_ff, dropout)
            self.norm1, self.norm2 = nn.LayerNorm(d_model, eps=1e-3), nn.LayerNorm(d_model, eps=1e-3)
    report = check(transformer.ENCODER_LAYER, EncoderEps)
    assert "your LayerNorm's eps is 0.001, the exercise's 1e-05" in flat(report.message), report.message


# ---------------------------------------------------------------- in the released notebook, in a kernel

MEMBERS = ("    def __init__(self, d_model, num_heads, d_ff, dropout=0.0):\n"
           "        super().__init__()\n"
           "        self.self_attn = MultiHeadAttention(d_model, num_heads)\n"
           "        self.cross_attn = MultiHeadAttention(d_model, num_heads)\n"
           "        self.feed_forward = PositionwiseFeedForward(d_model, d_ff)\n"
           "        self.norm1, self.norm2 = LayerNorm(d_model), LayerNorm(d_model)\n"
           "        self.norm3 = LayerNorm(d_model)\n\n")
IN_THE_NOTEBOOK = [
    ("class DecoderLayer(nn.Module):\n" + MEMBERS +
     "    def forward(self, x, memory, self_mask=None, memory_mask=None):\n"
     "        x = self.norm1(x + self.self_attn(x, x, x, self_mask)[0])\n"
     "        x = self.norm2(x + self.cross_attn(memory, x, x)[0][:, :x.size(1)])\n"
     "        return self.norm3(x + self.feed_forward(x))\n",
     "What differs: cross_attn gets query = the encoder memory"),
    ("class DecoderLayer(nn.Module):\n" + MEMBERS +
     "    def forward(self, x, memory, self_mask=None, memory_mask=None):\n"
     "        a = x + self.norm1(self.self_attn(x, x, x, self_mask)[0])\n"
     "        b = self.norm2(a + self.cross_attn(a, memory, memory, memory_mask)[0])\n"
     "        return self.norm3(b + self.feed_forward(b))\n",
     "What differs: norm1 is applied to self_attn's output before the residual add"),
]


@pytest.mark.slow
def test_in_the_released_notebook_the_wiring_is_named():
    from test_student_feedback import ROOT, Kernel, assert_short, cells
    folder = ROOT / "exercises" / "07_transformer"
    released = cells(folder / "07_transformer.ipynb")
    kernel = Kernel(folder)
    try:
        assert not kernel.run(released["imports"])[1]
        for source, says in IN_THE_NOTEBOOK:
            assert not kernel.run(source)[1]
            output, raised = kernel.run(released["test_DecoderLayer"])
            assert raised and says in flat(output), output
            assert_short(output, says)
    finally:
        kernel.close()


def test_a_mask_passed_inverted_to_a_sublayer_is_named():
    class EncoderInvertedMask(Encoder):
        def forward(self, x, mask=None):
            keep = None if mask is None else torch.logical_not(mask)      # nn.MultiheadAttention's convention
            h = self.norm1(x + self.self_attn(x, x, x, keep)[0])
            return self.norm2(h + self.feed_forward(h))
    report = check(transformer.ENCODER_LAYER, EncoderInvertedMask)
    assert "What differs: self_attn's mask is ~mask; it should be mask" in flat(report.message), report.message


def test_a_layer_built_on_the_students_own_attention_with_other_parameter_names_is_read_by_position():
    class OwnAttention(nn.Module):
        def __init__(self, d_model, num_heads):
            super().__init__()
            self.inner = MultiHeadAttention(d_model, num_heads)
            self.W_q, self.W_k, self.W_v, self.W_o = self.inner.W_q, self.inner.W_k, self.inner.W_v, self.inner.W_o
            del self.inner.W_q, self.inner.W_k, self.inner.W_v, self.inner.W_o

        def forward(self, q, k, v, mask=None):
            self.inner.W_q, self.inner.W_k, self.inner.W_v, self.inner.W_o = self.W_q, self.W_k, self.W_v, self.W_o
            return self.inner.forward(q, k, v, mask)

    class EncoderOwnAttention(EncoderRight):
        def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
            super().__init__(d_model, num_heads, d_ff, dropout)
            self.self_attn = OwnAttention(d_model, num_heads)

        def forward(self, x, mask=None):
            h = self.norm1(x + self.self_attn(x, x, x, mask)[0])
            return self.norm2(h + self.feed_forward(h))

    class EncoderOwnAttentionFFNOnX(EncoderOwnAttention):
        def forward(self, x, mask=None):
            h = self.norm1(x + self.self_attn(x, x, x, mask)[0])
            return self.norm2(self.feed_forward(x) + h)

    item = transformer.ENCODER_LAYER
    reference = item.reference()
    case = make_cases(item, 0)[2]
    right = observe(item, reference, case, reference)
    assert differences(right, observe(item, EncoderOwnAttention, case, reference)) == []
    said = differences(right, observe(item, EncoderOwnAttentionFFNOnX, case, reference))
    assert said == ["feed_forward's input is the layer input x; it should be norm1's output"], said


def test_the_batch_grader_without_the_submission_names_a_usual_eps_from_the_outcomes():
    from grader.checks import bert
    from grader.checks.compare import grade
    item = bert.BERT_EMBEDDINGS
    cases = make_cases(item, 0)
    result = grade(item, cases, run_student(item, BertEmbeddingsTorchLN, cases))
    said = flat(result.message)
    assert "Likely mistake: the reference with a LayerNorm eps of 1e-05 instead of 1e-12 gives your output" in said
    assert "expected" in said and "tolerance" in said, said
    result = grade(item, cases, run_student(item, BertEmbeddingsNudged, cases))
    assert "What differs: below the printed digits" in flat(result.message) and "eps" not in result.message


# ---------------------------------------------------------------- the batch grader: the record the sandbox made

CROSS_READS_INPUT = '''class DecoderLayer(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.cross_attn = MultiHeadAttention(d_model, num_heads)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff)
        self.norm1 = LayerNorm(d_model)
        self.norm2 = LayerNorm(d_model)
        self.norm3 = LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, memory, self_mask=None, memory_mask=None):
        h = self.norm1(x + self.dropout(self.self_attn(x, x, x, self_mask)[0]))
        h = self.norm2(h + self.dropout(self.cross_attn(x, memory, memory, memory_mask)[0]))   # x, not h
        return self.norm3(h + self.dropout(self.feed_forward(h)))
'''


def test_in_the_sandbox_the_layer_records_its_wiring_and_the_grader_names_it():
    """Batch grading has only the outcomes: the sandbox sends each case's record of what reached the sublayers
    (Outcome.wiring), and the grader compares it with the reference's, as the student's own check does."""
    import nbformat

    from grader.checks.compare import grade
    from grader.execution import execute
    from grader.sandbox.limits import Limits
    from grader.submission import code_cells, load_source

    path = ROOT / "solutions" / "07_transformer" / "07_transformer.ipynb"
    nb = nbformat.read(path, as_version=4)
    next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "DecoderLayer").source = \
        CROSS_READS_INPUT
    cells = code_cells(load_source(path), nb)[0]
    item = transformer.DECODER_LAYER
    cases = make_cases(item, 3)
    execution = execute(cells, [item.name], {item.name: cases}, Limits(cell_seconds=60.0, submission_seconds=300.0),
                        isolate=True)
    outcomes = execution.outcomes[item.name]
    assert all(o.wiring is not None for o in outcomes if o.error is None), outcomes[0]
    said = flat(grade(item, cases, outcomes).message)
    assert "What differs: cross_attn's query is the layer input x; it should be norm1's output" in said, said


@pytest.mark.parametrize("text", [
    None, "", "not json", "[]", '{"calls": [], "output": 3}', '{"calls": {}, "output": "x"}',
    '{"calls": [["norm1"]], "output": "x"}', '{"calls": [["norm1", {"x": 1}]], "output": "x"}',
    '{"calls": [], "output": "x", "more": 1}', '{"calls": [' + ",".join(['["a", {}]'] * 65) + '], "output": "x"}',
    '{"calls": [["a", {"x": "' + "y" * 2000 + '"}]], "output": "x"}'])
def test_a_record_that_is_not_one_is_ignored(text):
    from grader.checks.wiring import record_from_text

    assert record_from_text(text) is None


def test_a_record_survives_its_text():
    from grader.checks.wiring import record_from_text, record_text

    item = transformer.DECODER_LAYER
    case = make_cases(item, 0)[0]
    record = observe(item, NormBeforeAdd, case, item.reference())
    assert record.calls and record_from_text(record_text(record)) == record

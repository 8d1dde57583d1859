"""The checks of assignment 07_transformer (grader/checks/transformer.py): each catalogued mistake fails with
its diagnostic, valid alternatives written the way a student might pass, calling the shortcut scores 0, and
grade() gives partial credit per group (a mask mistake passes "basic shapes" and fails "masks")."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from grader.checks import transformer
from grader.checks.cases import groups, make_cases
from grader.checks.compare import compare, grade
from grader.checks.report import check
from grader.checks.run import run_student
from transformer_ref.layers import EncoderLayer, LayerNorm, PositionwiseFeedForward
from transformer_ref.model import Transformer
from transformer_ref.multihead import MultiHeadAttention

import checks_contract as contract

ITEMS = transformer.ITEMS
CHECKS = {transformer.ENCODER_LAYER: transformer.check_EncoderLayer,
          transformer.DECODER_LAYER: transformer.check_DecoderLayer,
          transformer.GREEDY_DECODE: transformer.check_greedy_decode}

# ---------------------------------------------------------------- valid alternatives


class EncoderLayerRef(nn.Module):
    """With the package's LayerNorm."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff)
        self.norm1, self.norm2 = LayerNorm(d_model), LayerNorm(d_model)

    def forward(self, x, mask=None):
        h = self.norm1(x + self.self_attn(x, x, x, mask)[0])
        return self.norm2(h + self.feed_forward(h))


class EncoderLayerTorchLN(EncoderLayerRef):
    """nn.LayerNorm, and the two residual blocks as a loop."""

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
        super().__init__(d_model, num_heads, d_ff)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, x, mask=None):
        for norm, sublayer in ((self.norm1, lambda y: self.self_attn(y, y, y, mask=mask)[0]),
                               (self.norm2, self.feed_forward)):
            x = norm(x + sublayer(x))
        return x


class EncoderLayerFused(EncoderLayerRef):
    """MultiHeadAttention's fused path (need_weights=False)."""

    def forward(self, x, mask=None):
        h = self.norm1(x + self.self_attn(x, x, x, mask, need_weights=False)[0])
        return self.norm2(h + self.feed_forward(h))


class DecoderLayerLoop(nn.Module):
    """The two attention blocks as a loop, with the package's LayerNorm."""

    norm = LayerNorm
    need_weights = True

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
        super().__init__()
        self.self_attn, self.cross_attn = MultiHeadAttention(d_model, num_heads), MultiHeadAttention(d_model, num_heads)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff)
        self.norm1, self.norm2, self.norm3 = self.norm(d_model), self.norm(d_model), self.norm(d_model)

    def forward(self, x, memory, self_mask=None, memory_mask=None):
        for attn, norm, kv, mask in ((self.self_attn, self.norm1, None, self_mask),
                                     (self.cross_attn, self.norm2, memory, memory_mask)):
            source = x if kv is None else kv
            x = norm(x + attn(x, source, source, mask, need_weights=self.need_weights)[0])
        return self.norm3(x + self.feed_forward(x))


class DecoderLayerTorchLN(DecoderLayerLoop):
    norm = nn.LayerNorm


class DecoderLayerFused(DecoderLayerLoop):
    norm = nn.LayerNorm
    need_weights = False


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
    transformer.ENCODER_LAYER: [EncoderLayerRef, EncoderLayerTorchLN, EncoderLayerFused],
    transformer.DECODER_LAYER: [DecoderLayerLoop, DecoderLayerTorchLN, DecoderLayerFused],
    transformer.GREEDY_DECODE: [greedy_lists, greedy_prealloc, greedy_forward],
}

# ---------------------------------------------------------------- shortcuts


class EncoderLayerPackage(EncoderLayer):
    pass


class DecoderLayerTorch(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout=0.0):
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(d_model, num_heads, d_ff, dropout=0.0, batch_first=True)

    def forward(self, x, memory, self_mask=None, memory_mask=None):
        return self.layer(x, memory)


def greedy_package(model, src, bos_id, eos_id, max_len):
    return Transformer.greedy_decode(model, src, bos_id, eos_id, max_len)


SHORTCUTS = [(transformer.ENCODER_LAYER, EncoderLayerPackage, "transformer_ref.layers.EncoderLayer"),
             (transformer.DECODER_LAYER, DecoderLayerTorch, "torch.nn.TransformerDecoderLayer"),
             (transformer.GREEDY_DECODE, greedy_package, "transformer_ref.model.Transformer.greedy_decode")]

# ---------------------------------------------------------------- the contract (tests/checks_contract.py)


def test_the_assignment_has_its_items_groups_mistakes_and_alternatives():
    contract.assert_assignment_shape(transformer, "07_transformer", ["EncoderLayer", "DecoderLayer", "greedy_decode"],
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
def test_cuda_copies_pass_for_an_alternative(item):
    contract.assert_cuda_copies_pass(item, ALTERNATIVES[item][0])


# ---------------------------------------------------------------- assignment-specific tests


@pytest.mark.parametrize("item,key", [(transformer.ENCODER_LAYER, "mask_ignored"),
                                      (transformer.DECODER_LAYER, "self_mask_ignored")], ids=["encoder", "decoder"])
def test_grade_an_ignored_mask_passes_basic_shapes_and_fails_masks(item, key):
    mistake = contract.mistake(item, key)
    result = contract.graded(item, mistake.impl)
    assert {g.group: g.passed for g in result.groups} == {"basic shapes": True, "masks": False}
    assert result.fraction == 0.5 and result.mistake == key
    assert result.message.startswith(f"{item.name}: right on basic shapes; wrong on masks.")
    assert f"Likely mistake: {mistake.says}" in result.message


@pytest.mark.parametrize("seed", range(4))
def test_the_greedy_decode_cases_exercise_stopping_in_every_group(seed):
    """One sequence stops before max_len; in the first batch every sequence stops, at different steps; in the
    second some sequence runs to max_len while another stops."""
    one, every, some, *rules = make_cases(transformer.GREEDY_DECODE, seed)
    assert [c.group for c in (one, every, some, *rules)] == [
        "one sequence", "a batch where every sequence stops", "a batch where some sequence runs to max_len",
        transformer.RULES, transformer.RULES]
    for case, all_stop in ((one, True), (every, True), (some, False)):
        model, src, bos, eos, max_len = case.args
        assert eos not in (bos, model.pad_id)
        tokens = model.greedy_decode(src, bos, eos, max_len)
        stopped = (tokens == eos).any(1)
        assert bool(stopped.all()) == all_stop and stopped.any(), case.label
        assert (tokens.size(1) < max_len) == all_stop, case.label
        if len(src) > 1:
            steps = [int((row == eos).nonzero()[0]) for row in tokens[stopped]]
            assert len(set(steps)) > 1, case.label


def test_grade_greedy_decode_mistakes_fail_the_groups_that_show_them():
    item = transformer.GREEDY_DECODE
    cases = make_cases(item, 0)
    by_key = {m.key: m for m in item.mistakes}
    assert groups(cases) == ["one sequence", "a batch where every sequence stops",
                             "a batch where some sequence runs to max_len", transformer.RULES]
    one, every, some, rules = groups(cases)
    expected_passing = {"stop_when_any": [one], "never_stops": [some], "max_len_off_by_one": [one, every, rules]}
    for key, passing in expected_passing.items():
        result = grade(item, cases, run_student(item, by_key[key].impl, cases))
        assert [g.group for g in result.groups if g.passed] == passing, (key, result.message)
        assert result.mistake == key


def test_greedy_decode_cases_survive_a_round_trip_through_torch_save():
    """The grader runs the submission in another process: the models in the cases must serialise."""
    item = transformer.GREEDY_DECODE
    buffer = io.BytesIO()
    torch.save(make_cases(item, 0), buffer)
    buffer.seek(0)
    cases = torch.load(buffer, weights_only=False)
    outcomes = run_student(item, greedy_lists, cases)
    buffer = io.BytesIO()
    torch.save(outcomes, buffer)
    buffer.seek(0)
    assert compare(item, cases, torch.load(buffer, weights_only=False)).passed


def test_making_cases_leaves_the_global_random_state_alone():
    state = torch.random.get_rng_state()
    for item in ITEMS:
        make_cases(item, 3)
    assert torch.equal(torch.random.get_rng_state(), state)


# ---------------------------------------------------------------- no silent pass: the notebook's rules (issue 16)
# "Wrap the loop in torch.no_grad()", and tensors on src's device: each of these gave the right tokens on the
# CPU and passed with full marks before the group "torch.no_grad() and src's device".

def _decode_loop(model, src, bos_id, eos_id, max_len, device=True, bound=True, memory=None):
    memory = model.encode(src) if memory is None else memory
    where = {"device": src.device} if device else {}
    tokens = torch.full((src.size(0), 1), bos_id, dtype=torch.long, **where)
    finished = torch.zeros(src.size(0), dtype=torch.bool, **where)
    while tokens.size(1) < max_len or not bound:
        nxt = model.decode(tokens, memory, src)[:, -1].argmax(-1).masked_fill(finished, model.pad_id)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        finished |= nxt == eos_id
        if finished.all():
            break
    return tokens


def greedy_without_no_grad(model, src, bos_id, eos_id, max_len):
    return _decode_loop(model, src, bos_id, eos_id, max_len)


def greedy_no_grad_around_encode_only(model, src, bos_id, eos_id, max_len):
    with torch.no_grad():
        memory = model.encode(src)
    return _decode_loop(model, src, bos_id, eos_id, max_len, memory=memory)


def greedy_device_ignored(model, src, bos_id, eos_id, max_len):
    with torch.no_grad():
        return _decode_loop(model, src, bos_id, eos_id, max_len, device=False)


def greedy_list_tokens_on_default(model, src, bos_id, eos_id, max_len):
    with torch.no_grad():
        memory = model.encode(src)
        out = [[bos_id] for _ in range(src.size(0))]
        done = [False] * src.size(0)
        while len(out[0]) < max_len and not all(done):
            nxt = model.decode(torch.tensor(out), memory, src)[:, -1].argmax(-1).tolist()
            for b in range(len(out)):
                out[b].append(model.pad_id if done[b] else nxt[b])
                done[b] = done[b] or nxt[b] == eos_id
        return torch.tensor(out)


def greedy_returns_a_new_tensor_on_default(model, src, bos_id, eos_id, max_len):
    with torch.no_grad():
        return torch.tensor(_decode_loop(model, src, bos_id, eos_id, max_len).tolist())


RULE_BREAKERS = [(greedy_without_no_grad, "model.encode ran with gradients on"),
                 (greedy_returns_a_new_tensor_on_default, "create new tensors with device=src.device"),
                 (greedy_no_grad_around_encode_only, "model.decode ran with gradients on"),
                 (greedy_device_ignored, "create new tensors with device=src.device"),
                 (greedy_list_tokens_on_default, "create new tensors with device=src.device")]


@pytest.mark.parametrize("impl,says", RULE_BREAKERS, ids=lambda x: getattr(x, "__name__", None))
def test_greedy_decode_breaking_a_rule_fails_that_group_with_a_named_message(impl, says):
    item = transformer.GREEDY_DECODE
    report = contract.check(item, impl)
    assert not report.passed and says in report.message, report.message
    with pytest.raises(contract.CheckFailed, match=says.split(" ")[0]):
        transformer.check_greedy_decode(impl)
    result = contract.graded(item, impl)
    assert [g.group for g in result.groups if not g.passed] == [transformer.RULES], result.message
    assert result.fraction == pytest.approx(3 / 4)


def test_greedy_decode_under_inference_mode_or_a_no_grad_decorator_passes():
    @torch.inference_mode()
    def greedy_inference_mode(model, src, bos_id, eos_id, max_len):
        return _decode_loop(model, src, bos_id, eos_id, max_len)

    def greedy_grad_off(model, src, bos_id, eos_id, max_len):
        with torch.set_grad_enabled(False):
            return _decode_loop(model, src, bos_id, eos_id, max_len)
    for impl in (greedy_inference_mode, greedy_grad_off):
        assert contract.check(transformer.GREEDY_DECODE, impl).passed


def test_greedy_decode_without_a_max_len_bound_is_told_to_stop_not_to_change_the_model():
    """transformer_ref says "build the module with a larger max_len" when the target outgrows the positional
    table: the student must not change the model; the check says where their loop should have stopped."""
    def greedy_unbounded(model, src, bos_id, eos_id, max_len):
        with torch.no_grad():
            return _decode_loop(model, src, bos_id, eos_id, max_len, bound=False)
    report = contract.check(transformer.GREEDY_DECODE, greedy_unbounded)
    assert not report.passed and "kept decoding past max_len = 10" in report.message, report.message
    assert "larger max_len" not in report.message and "_decode_loop" not in report.message
    assert "at line" in report.message and "model.decode(tokens, memory, src)" in report.message


# ---------------------------------------------------------------- crashes point at the student's line (item 4)

_DecoderLayerWith = transformer._DecoderLayerMistake   # DecoderLayer's members; each forward below is a student's


class DecoderLayerSelfMaskToCross(_DecoderLayerWith):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        x = self.norm1(x + self.self_attn(x, x, x, self_mask)[0])
        x = self.norm2(x + self.cross_attn(x, memory, memory, self_mask)[0])
        return self.norm3(x + self.feed_forward(x))


class DecoderLayerValuesFromX(_DecoderLayerWith):
    def forward(self, x, memory, self_mask=None, memory_mask=None):
        x = self.norm1(x + self.self_attn(x, x, x, self_mask)[0])
        x = self.norm2(x + self.cross_attn(x, memory, x, memory_mask)[0])
        return self.norm3(x + self.feed_forward(x))


@pytest.mark.parametrize("impl,line", [(DecoderLayerSelfMaskToCross, "self.cross_attn(x, memory, memory, self_mask)"),
                                       (DecoderLayerValuesFromX, "self.cross_attn(x, memory, x, memory_mask)")],
                         ids=lambda x: getattr(x, "__name__", None))
def test_a_crash_inside_transformer_ref_is_reported_at_the_students_line_with_the_packages_message(impl, line):
    report = contract.check(transformer.DECODER_LAYER, impl)
    assert not report.passed and "raised ValueError at line" in report.message, report.message
    assert line in report.message, report.message                          # the student's own line
    assert "raise ValueError" not in report.message and "larger" not in report.message   # not the package's code
    assert "shape" in report.message.splitlines()[1].rsplit("`: ", 1)[1], report.message   # then the package's words


@torch.no_grad()
def _no_grad_decode_loop(model, src, bos_id, eos_id, max_len):
    """A student's helper under @torch.no_grad(): torch's decorator wraps the reference the same way."""
    memory = model.encode(src)
    out = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    while out.size(1) < max_len and not done.all():
        nxt = model.decode(out, memory, src)[:, -1].argmax(-1).masked_fill(done, model.pad_id)
        out = torch.cat([out, nxt[:, None]], dim=1)
        done |= nxt == eos_id
    return out


def _decorated_greedy(model, src, bos_id, eos_id, max_len):
    return _no_grad_decode_loop(model, src, bos_id, eos_id, max_len)


def test_a_greedy_decode_under_torch_no_grad_is_not_taken_for_the_reference():
    """A helper under @torch.no_grad(): the decorator's wrapper is the same code for every decorated function,
    so it must not count as the reference's (Seq2Seq.greedy_decode is decorated the same way)."""
    report = check(transformer.GREEDY_DECODE, _decorated_greedy, seeds=(0, 1))
    assert report.passed and not report.shortcut, report.message

"""How a layer built from sublayers is wired, observed while it runs, and where the student's wiring differs.

``explain_layer`` is the ``Item.explain`` of EncoderLayer, DecoderLayer and AddNorm: when no catalogued mistake
reproduces the outputs, it runs the student's module once more on the failing case, and the reference module
(with the same parameters) on the same case, with the ``forward`` of every direct submodule that has
parameters wrapped (the members the checker sets; a dropout may as well be F.dropout), so that both
``self.norm1(h)`` and ``self.norm1.forward(h)`` are seen. Each call is written down as the submodule's name
and, for each argument that holds a tensor or None (bound to the parameter names: query, key, value, mask
...), what it is: the layer's input (x, memory, the masks), the output of an earlier call, or the sum of two of
these (a residual), found by value. A call whose output equals one of its inputs (an identity) is left out.
The two records are then compared: which submodules are called how often, in what order, what reached the
first call that got something else, and what the layer returned. What is said is what was observed
("What differs: ..."), in the names the student's module uses.

Nothing is claimed without being observed: a submission that crashes on the second run, or whose record
matches the reference's, gets no sentence (the numbers stay).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from grader.checks.cases import Case, clone
from grader.checks.compare import TOLERANCES, mismatch, reference_outcomes
from grader.checks.item import Item
from grader.checks.run import Outcome, _load_state, run_student
from grader.checks.watch import original

OBSERVED = "What differs: "
WORDS = {"x": "the layer input x", "memory": "the encoder memory", "sublayer_out": "sublayer_out"}
MAX_SENTENCES = 2
MAX_RECORD = 2000   # characters of a record sent from the sandbox (the wire's longest string)
MAX_CALLS = 64      # calls in it


@dataclass
class Call:
    """One call of a submodule: its name and what reached each parameter that holds a tensor or None."""

    name: str
    inputs: dict[str, str]


@dataclass
class Record:
    """What a layer did on one input: its calls in order, and what it returned."""

    calls: list[Call] = field(default_factory=list)
    output: str = "?"


# ---------------------------------------------------------------- Item.explain for layers

def explain_layer(item: Item, cases: Sequence[Case], outcomes: Sequence[Outcome], impl: Any = None) -> str | None:
    """A LayerNorm eps that explains the outputs and a difference below the printed digits, else the wiring that
    differs from the reference's on the first case with a wrong value, or None. Without the submission at hand
    (the batch grader has only its outcomes) the record the sandbox made of that case is used (Outcome.wiring)."""
    expected = reference_outcomes(item, cases)
    index = next((i for i, (out, ref) in enumerate(zip(outcomes, expected))
                  if out.error is None and mismatch(item, ref.value, out.value) is not None), None)
    if index is None:
        return None
    digits = hidden_difference(item, expected[index].value, outcomes[index].value)
    eps = _eps_explains(item, cases, outcomes, impl) if impl is not None or digits is not None else None
    if eps is not None:
        where = f" ({digits.removeprefix('below the printed digits: ')})" if digits else ""
        return f"Likely mistake: {eps}{where}."
    if digits is not None:
        return f"{OBSERVED}{digits}."
    failing = cases[index]
    reference = item.reference()
    if impl is None:   # the batch grader: the record the sandbox made, if any
        theirs = record_from_text(outcomes[index].wiring)
        if theirs is None:
            return None
    else:
        try:
            theirs = observe(item, impl, failing, reference)
        except Exception:   # the student's code, run once more: whatever it does, the numbers stay the message
            return None
    right = observe(item, reference, failing, reference)
    said = differences(right, theirs)
    return OBSERVED + "; ".join(said[:MAX_SENTENCES]) + "." if said else None


def record_text(record: Record) -> str:
    """A record as the text the sandbox sends (JSON: the calls in order, each [name, {parameter: label}], and
    the output's label)."""
    return json.dumps({"calls": [[c.name, c.inputs] for c in record.calls], "output": record.output})


def record_from_text(text: str | None) -> Record | None:
    """The record `text` stands for, or None when it is not one (it came from the sandbox: student code may
    have written it, so every part is checked)."""
    try:
        data = json.loads(text) if isinstance(text, str) and len(text) <= MAX_RECORD else None
    except ValueError:
        return None
    if type(data) is not dict or set(data) != {"calls", "output"} or type(data["output"]) is not str \
            or type(data["calls"]) is not list or len(data["calls"]) > MAX_CALLS:
        return None
    calls = []
    for call in data["calls"]:
        if type(call) is not list or len(call) != 2 or type(call[0]) is not str or type(call[1]) is not dict \
                or not all(type(k) is str and type(v) is str for k, v in call[1].items()):
            return None
        calls.append(Call(call[0], call[1]))
    return Record(calls, data["output"])


# ---------------------------------------------------------------- differences below the printed digits

def hidden_difference(item: Item, expected: Any, got: Any) -> str | None:
    """For float tensors whose largest difference beyond the tolerance prints alike at 4 significant digits
    (what the message's rows show): that value with enough digits to tell them apart, and the tolerance."""
    pairs = zip(expected, got) if isinstance(expected, tuple) and isinstance(got, (tuple, list)) else [(expected, got)]
    for e, g in pairs:
        if not (isinstance(e, torch.Tensor) and isinstance(g, torch.Tensor) and e.is_floating_point()
                and g.shape == e.shape and g.dtype == e.dtype and g.device == e.device) or e.numel() == 0:
            continue
        rtol, atol = item.tol.get(e.dtype, TOLERANCES.get(e.dtype, (1e-4, 1e-5)))
        over = ((g - e).abs() - (atol + rtol * e.abs())).nan_to_num(float("-inf"))
        if not bool((over > 0).any()):
            continue
        at = tuple(int(i) for i in torch.unravel_index(over.argmax(), over.shape))
        a, b = e[at].item(), g[at].item()
        if f"{a:.4g}" != f"{b:.4g}":
            return None
        n = next((d for d in range(5, 18) if f"{a:.{d}g}" != f"{b:.{d}g}"), 17)
        return (f"below the printed digits: at {at} expected {a:.{n}g}, got {b:.{n}g} (tolerance "
                f"{atol + rtol * abs(a):.2g})")
    return None


def _norm_eps(module: torch.nn.Module) -> set[float]:
    """The eps of every normalisation member (nn.LayerNorm, the course's LayerNorm, a student's own with .eps)."""
    return {float(m.eps) for m in _norms(module)}


def _norms(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The members below `module` that normalise: a class named ...Norm... with a number as eps."""
    return [m for m in module.modules() if m is not module and "Norm" in type(m).__name__
            and isinstance(getattr(m, "eps", None), (int, float)) and not isinstance(m.eps, bool)]


COMMON_EPS = (1e-5, 1e-6, 1e-12)   # nn.LayerNorm's default, some implementations', BERT's


def _eps_explains(item: Item, cases: Sequence[Case], outcomes: Sequence[Outcome], impl: Any) -> str | None:
    """"your LayerNorm's eps is 1e-05, ..." when the student's norms share one eps other than the reference's
    and the reference built with that eps gives the student's outputs on every case. Without the submission (the
    batch grader) the usual values of eps are tried the same way."""
    init = cases[0].init or {}
    reference = item.reference()
    ours = _norm_eps(reference(**init))
    if len(ours) != 1:
        return None
    right = ours.pop()
    if impl is None:
        found = next((eps for eps in COMMON_EPS if eps != right and _reproduces(item, cases, outcomes, eps)), None)
        return None if found is None else (f"the reference with a LayerNorm eps of {found:g} instead of {right:g} "
                                           f"gives your output: check the eps of your LayerNorm")
    try:
        theirs = _norm_eps(impl(**init))
    except Exception:
        return None
    if len(theirs) != 1 or theirs == {right}:
        return None
    eps = theirs.pop()
    if not _reproduces(item, cases, outcomes, eps):
        return None
    return (f"your LayerNorm's eps is {eps:g}, the exercise's {right:g}: with eps={eps:g} the reference gives your "
            f"output")


def _reproduces(item: Item, cases: Sequence[Case], outcomes: Sequence[Outcome], eps: float) -> bool:
    """Whether the reference with every norm's eps set to `eps` gives the outcomes (on every case with a value)."""
    reference = item.reference()

    class WithEps(reference):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for m in _norms(self):
                m.eps = eps
    again = run_student(item, WithEps, cases, watch=False)
    pairs = [(out, r) for out, r in zip(outcomes, again) if out.error is None]
    return bool(pairs) and all(r.error is None and mismatch(item, r.value, out.value) is None for out, r in pairs)


# ---------------------------------------------------------------- observing the wiring

def observe(item: Item, impl: Any, case: Case, reference: type) -> Record:
    """Build `impl` for `case` (its parameters set as for grading), run it once with its direct submodules'
    forward wrapped, and return what it did. Layer inputs are named by the reference's forward signature."""
    args, kwargs = clone((case.args, case.kwargs))
    module = impl(**(case.init or {}))
    if case.state:
        _load_state(item, module, case.state)
    module.train(case.train)
    names = inspect.signature(original(reference.forward)).bind(None, *args, **kwargs).arguments   # a trip-wire's
    known = [(name, value) for name, value in list(names.items())[1:] if isinstance(value, torch.Tensor)]
    record, counts = Record(), {}
    for name, child in module.named_children():
        if next(child.parameters(), None) is not None:   # the members the checker sets; a dropout may be F.dropout
            child.forward = _watched(name, child, child.forward, known, record, counts)
    with torch.no_grad():
        out = module(*args, **kwargs)
    first = out[0] if isinstance(out, (tuple, list)) and out else out
    record.output = _label(first, known)
    return record


def _watched(name: str, child: torch.nn.Module, forward: Any, known: list, record: Record, counts: dict):
    """`forward`, writing down each call in `record` and its output in `known`."""
    try:
        signature = inspect.signature(forward)
    except (TypeError, ValueError):
        signature = None

    def watched(*args: Any, **kwargs: Any) -> Any:
        bound = _bind(signature, args, kwargs)
        inputs = {p: _label(v, known) for p, v in bound.items() if v is None or isinstance(v, torch.Tensor)}
        out = forward(*args, **kwargs)
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        tensors = [v for v in bound.values() if isinstance(v, torch.Tensor)]
        if isinstance(first, torch.Tensor) and any(_same(first, t) for t in tensors):
            return out      # an identity (dropout in evaluation mode): not a step of the formula
        counts[name] = counts.get(name, 0) + 1
        label = name if counts[name] == 1 else f"{name} (call {counts[name]})"
        record.calls.append(Call(name, inputs))
        if isinstance(first, torch.Tensor):
            known.append((label, first))
        return out
    return watched


def _bind(signature: inspect.Signature | None, args: tuple, kwargs: dict) -> dict:
    """The call's arguments by parameter name (positional ones as arg0, arg1 ... when it cannot be bound)."""
    if signature is not None:
        try:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return dict(bound.arguments)
        except TypeError:
            pass
    return {**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if a.dtype == torch.bool:
        return bool(torch.equal(a, b))
    rtol = 1e-5 if a.dtype in (torch.float32, torch.float64) else 1e-2
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * 1e-1))


def _label(value: Any, known: list[tuple[str, torch.Tensor]]) -> str:
    """What `value` is: a known tensor's name, "a + b" for the sum of two known tensors, "None", or "?"."""
    if value is None:
        return "None"
    if not isinstance(value, torch.Tensor):
        return "?"
    for name, t in known:
        if _same(value, t):
            return name
    if value.dtype == torch.bool:   # ~mask: nn.MultiheadAttention's convention, True = ignore
        return next((f"~{name}" for name, t in known if t.dtype == torch.bool and _same(value, ~t)), "?")
    if value.is_floating_point():
        for i, (a, ta) in enumerate(known):
            for b, tb in known[i + 1:]:
                if ta.shape == tb.shape == value.shape and ta.dtype == value.dtype and _same(value, ta + tb):
                    return f"{a} + {b}"
    return "?"


# ---------------------------------------------------------------- comparing two records

def differences(right: Record, theirs: Record) -> list[str]:
    """Sentences on how `theirs` is wired differently from `right`, most telling first; [] when alike."""
    said = _counts(right, theirs) + _order(right, theirs)
    said += _arguments(right, theirs) if not said else []
    if not said and theirs.output != right.output:
        said.append(f"your layer returns {_words(theirs.output)}; it should return {_words(right.output)}")
    return said


def _counts(right: Record, theirs: Record) -> list[str]:
    want, got = _tally(right), _tally(theirs)
    said = []
    for name in dict.fromkeys([*want, *got]):
        n, m = want.get(name, 0), got.get(name, 0)
        if n != m:
            said.append(f"{name} is {'never called' if m == 0 else _times(m)}"
                        + (f" (the formula: {_times(n).removeprefix('called ')})" if m and n else ""))
    return [" and ".join(said)] if said else []


def _tally(record: Record) -> dict[str, int]:
    counts: dict[str, int] = {}
    for call in record.calls:
        counts[call.name] = counts.get(call.name, 0) + 1
    return counts


def _times(n: int) -> str:
    return {1: "called once", 2: "called twice"}.get(n, f"called {n} times")


def _order(right: Record, theirs: Record) -> list[str]:
    want, got = [c.name for c in right.calls], [c.name for c in theirs.calls]
    if want == got or sorted(want) != sorted(got):
        return []
    return [f"your layer calls {', '.join(got)}; the formula calls {', '.join(want)}"]


def _arguments(right: Record, theirs: Record) -> list[str]:
    """What reached the first call that got something else than in the reference (the calls after it read
    values that already differ: fixing the first is the step to take)."""
    for i, (want, got) in enumerate(zip(right.calls, theirs.calls)):
        expected = _in_their_names(want.inputs, got.inputs)
        wrong = [p for p in dict.fromkeys([*expected, *got.inputs])
                 if expected.get(p, "None") != got.inputs.get(p, "None")]
        if not wrong:
            continue
        if len(wrong) == 1:
            p = wrong[0]
            what = "input" if len(got.inputs) == 1 else p     # norm1's input, not "norm1's x"
            return [_norm_before_add(i, got, expected.get(p, "None"), got.inputs.get(p, "None"), theirs)
                    or f"{got.name}'s {what} is {_words(got.inputs.get(p, 'None'))}; "
                       f"it should be {_words(expected.get(p, 'None'))}"]
        return [f"{got.name} gets {_assign(wrong, got.inputs)}; it should get {_assign(wrong, expected)}"]
    return []


def _norm_before_add(index: int, call: Call, want: str, got: str, theirs: Record) -> str | None:
    """The sentence when `call` normalises a sublayer's output that the formula adds to a residual first (want
    "r + s", got "s") and a later call reads "r + <this call>"."""
    parts = want.split(" + ")
    if len(parts) != 2 or got not in parts:
        return None
    residual = parts[1 - parts.index(got)]
    for other in theirs.calls[index + 1:]:
        if any(set(label.split(" + ")) == {residual, call.name} for label in other.inputs.values()):
            return (f"{call.name} is applied to {got}'s output before the residual add, {residual} + "
                    f"{call.name}({got}); post-LN adds first: {call.name}({residual} + {got})")
    return None


def _in_their_names(want: dict[str, str], got: dict[str, str]) -> dict[str, str]:
    """The reference's inputs under the student's parameter names: by position when the two modules name their
    parameters differently (nn.LayerNorm's `input`, the course's LayerNorm's `x`; a student's own attention's
    q, k, v, mask), the reference's extra parameters left out where they hold None (cache)."""
    if set(want) <= set(got):
        return want
    theirs, ours = list(got), list(want)
    renamed = {theirs[i] if i < len(theirs) else p: label for i, (p, label) in enumerate(want.items())}
    return {p: label for p, label in renamed.items() if p in got or label != "None"} if \
        all(want[p] == "None" for p in ours[len(theirs):]) else want


def _assign(params: list[str], inputs: dict[str, str]) -> str:
    """"query = x, key = value = the encoder memory": parameters that get the same thing are written together."""
    groups: dict[str, list[str]] = {}
    for p in params:
        groups.setdefault(inputs.get(p, "None"), []).append(p)
    return ", ".join(" = ".join([*ps, _words(label)]) for label, ps in groups.items())


def _words(label: str) -> str:
    """A label as the student reads it: "x + self_attn" -> "x + self_attn's output"."""
    if label == "?":
        return "a value computed outside the submodules"
    if label == "None":
        return "None"
    parts = label.split(" + ")
    words = [WORDS.get(p, p if p.endswith("mask") else f"{p}'s output") for p in parts]
    if len(parts) == 2:
        return f"{' + '.join(p.replace('the layer input ', '') for p in words)} (a residual sum)"
    return words[0]

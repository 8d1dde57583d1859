"""What differs between a submission's bool mask and the right one, said in the student's terms.

``explain_mask`` is the ``Item.explain`` of the items that return a bool mask (True = may attend): when no
catalogued mistake reproduces the submission's masks, it looks for an exact structural relation between the
student's mask and the right one, over every case:

- a causal mask of another form: ``[~] (j <= i + offset)`` with the offset of the wrong alignment (top-left,
  the wrong sign) or shifted by k diagonals, inverted or not; mistakes compose ("inverted, and aligned to the
  top-left corner"); in a decoder mask the causal part is read on the columns of keys that are not padding,
  and the padded columns are judged apart;
- the complement of a catalogued mistake ("inverted, and you compared with 0 instead of pad_id");
- on one failing case: the complement, the transpose, or differences only on one diagonal, only in the rows
  of padded queries, the columns of padded keys, or some rows or columns (named).

What holds exactly on every case is said as "Likely mistake: ..."; what is only observed on the failing case
as "What differs: ...". Nothing here claims what it has not checked: every sentence is an exact property of
the tensors. The pure functions (``causal_form``, ``describe``) take tensors; tests/test_structure.py calls
them on hand-made masks.

``explain_attention_mask`` does the same for attention that returns its weights: the keys a query attends to
are where its weights are not zero, and that pattern is compared with the mask the case passed, inverted or
broadcast without its head axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from grader.checks.cases import Case
from grader.checks.compare import mismatch, reference_outcomes
from grader.checks.item import Item
from grader.checks.run import Outcome, run_student

LIKELY, OBSERVED = "Likely mistake: ", "What differs: "
INVERTED = "your mask is inverted: here True = may attend (nn.MultiheadAttention's True = ignore)"


# ---------------------------------------------------------------- Item.explain for mask items

def explain_mask(item: Item, cases: Sequence[Case], outcomes: Sequence[Outcome], impl: Any = None) -> str | None:
    """The structural diagnosis of a submission's wrong bool masks (a line for the student), or None; from the
    outcomes alone (`impl` is not needed), so the batch grader's feedback says it too."""
    expected = [ref.value for ref in reference_outcomes(item, cases)]
    got = [out.value if out.error is None else None for out in outcomes]
    usable = [i for i, (e, g) in enumerate(zip(expected, got)) if _comparable(e, g)]
    failing = [i for i in usable if not torch.equal(expected[i], got[i])]
    shown = next((i for i, out in enumerate(outcomes) if out.error is not None
                  or mismatch(item, expected[i], out.value) is not None), None)
    if not failing or shown != failing[0]:   # the case the student reads is wrong in another way (shape, dtype)
        return None
    if all(torch.equal(got[i], ~expected[i]) for i in failing):
        return LIKELY + INVERTED + "."
    padded = [_padded_keys(cases[i], expected[i]) for i in usable]
    found = causal_form([expected[i] for i in usable], [got[i] for i in usable], padded)
    if found is not None:
        return LIKELY + found
    if (found := _inverted_mistake(item, cases, got)) is not None:
        return LIKELY + found
    said = [describe(expected[i], got[i], _padded_keys(cases[i], expected[i])) for i in failing]
    if said[0] is not None and all(s == said[0] for s in said):
        kind, sentence = said[0]
        return (LIKELY if kind == "likely" else OBSERVED) + sentence
    if said[0] is not None:
        return f"{OBSERVED}on case {failing[0] + 1}, {said[0][1]}"
    return None


def _comparable(expected: Any, got: Any) -> bool:
    return (isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor) and expected.dtype == torch.bool
            and got.dtype == torch.bool and got.shape == expected.shape and got.device == expected.device
            and not got.is_meta)   # a meta case has a shape, a dtype and a device, no values


def _padded_keys(case: Case, mask: torch.Tensor) -> torch.Tensor | None:
    """(B, T) True at the padding, for a case called as (tokens (B, T), pad_id) whose mask is (B, T_q, T)."""
    if len(case.args) < 2 or not isinstance(case.args[0], torch.Tensor) or not isinstance(case.args[1], int):
        return None
    tokens, pad_id = case.args[:2]
    if tokens.dim() != 2 or mask.dim() != 3 or mask.shape[0] != tokens.shape[0] or mask.shape[-1] != tokens.shape[1]:
        return None
    return tokens.to(mask.device) == pad_id


def _inverted_mistake(item: Item, cases: Sequence[Case], got: Sequence[Any]) -> str | None:
    """A catalogued mistake whose complement is the submission's mask on every case: both are named."""
    for mistake in item.mistakes:
        theirs = [out.value if out.error is None else None for out in run_student(item, mistake.impl, cases,
                                                                                  watch=False)]
        valued = [(m, g) for m, g in zip(theirs, got) if not (isinstance(g, torch.Tensor) and g.is_meta)]
        if all(_comparable(m, g) and torch.equal(g, ~m) for m, g in valued):
            return f"{INVERTED}; and besides, {mistake.says[0].lower()}{mistake.says[1:]}"
    return None


# ---------------------------------------------------------------- the mask an attention's weights show

def explain_attention_mask(item: Item, cases: Sequence[Case], outcomes: Sequence[Outcome], impl: Any = None
                           ) -> str | None:
    """Item.explain for attention returning (output, weights): how the mask was used, read from which weights
    are zero, when one reading fits every case with a mask (on its query rows that may attend somewhere)."""
    at = item.outputs.index("weights")
    expected = reference_outcomes(item, cases)
    fits: dict[str, bool] = {}
    read = set()   # the cases whose weights were read
    for i, (case, out, ref) in enumerate(zip(cases, outcomes, expected)):
        mask = case.kwargs.get("mask")
        weights = out.value[at] if out.error is None and isinstance(out.value, (tuple, list)) and \
            len(out.value) > at else None
        if mask is None or not isinstance(weights, torch.Tensor) or weights.shape != ref.value[at].shape \
                or weights.device != mask.device:
            continue
        read.add(i)
        seen = (weights != 0) & ~weights.isnan()
        for name, reading in _readings(mask, weights.shape).items():
            rows = reading.any(-1, keepdim=True).expand_as(reading) if reading is not None else None
            fits[name] = fits.get(name, True) and reading is not None and torch.equal(seen[rows], reading[rows])
    said = {"right": None,
            "inverted": f"{INVERTED}: your weights are zero exactly where the mask is True.",
            "heads": ("your weights follow a 3-D mask broadcast without a head axis: head h of every sequence uses "
                      "mask[h]; unsqueeze(1) it to (B, 1, T_q, T_k) first."),
            "inverted heads": (f"{INVERTED}; and your weights follow it broadcast without a head axis (head h uses "
                               f"mask[h]): unsqueeze(1) a 3-D mask first."),
            "ignored": "the mask is not applied: your weights are nonzero at keys it hides."}
    name = next((n for n in said if fits.get(n)), None)
    if name in (None, "right"):
        return None
    first = next((i for i, (out, ref) in enumerate(zip(outcomes, expected))
                  if out.error is not None or mismatch(item, ref.value, out.value) is not None), None)
    if first is None or first not in read:   # the case the student reads: an error, a wrong shape or no mask
        return f"{OBSERVED}besides, on the cases with a mask: {said[name][0].lower()}{said[name][1:]}"
    return LIKELY + said[name]


def _readings(mask: torch.Tensor, shape: torch.Size) -> dict[str, torch.Tensor | None]:
    """The keys each query may attend to, (shape), for each way of using `mask` that a student might (None
    where that way cannot broadcast)."""
    def broadcast(m: torch.Tensor) -> torch.Tensor | None:
        try:
            return torch.broadcast_to(m, shape)
        except RuntimeError:
            return None
    right = mask.unsqueeze(1) if mask.dim() == 3 and len(shape) == 4 else mask
    out = {name: broadcast(m) for name, m in (("right", right), ("inverted", ~right), ("heads", mask),
                                              ("inverted heads", ~mask))}
    out["ignored"] = torch.ones(shape, dtype=torch.bool, device=mask.device)
    return out


# ---------------------------------------------------------------- causal masks of another form

# The forms of the offset in "query i may see keys j <= i + offset", by how a student gets them.
FORMS = {"end": lambda T_q, T_k: T_k - T_q,     # the right one: the queries are the last T_q positions
         "start": lambda T_q, T_k: 0,           # aligned to the top-left corner
         "negated": lambda T_q, T_k: T_q - T_k}  # the offset with the wrong sign


def causal_form(expected: Sequence[torch.Tensor], got: Sequence[torch.Tensor],
                padded: Sequence[torch.Tensor | None] | None = None) -> str | None:
    """The sentence naming how the student's causal masks differ from the right ones, when both are, on every
    case, ``[~] (j <= i + offset)`` for an offset of one of FORMS shifted by k (|k| <= 2) diagonals; None
    otherwise. Masks are (..., T_q, T_k); with `padded` ((B, T_k) per case: True at padded keys), the causal
    part is read on the other columns and the padded columns are judged apart. The right masks must show a
    causal structure somewhere (not all True)."""
    padded = list(padded) if padded is not None else [None] * len(expected)
    slices = [s for e, g, p in zip(expected, got, padded) for s in _slices(e, g, p)]
    if not slices or all(bool(e[w].all()) for e, _, w in slices):
        return None
    right = next((f for f in _candidates() if all(_fits(e, w, *f) for e, _, w in slices)), None)
    if right != (False, "end", 0):
        return None
    wrong = next((f for f in _candidates() if all(_fits(g, w, *f) for _, g, w in slices)), None)
    if wrong is None:
        return None
    parts = _causal_parts(*wrong)
    if any(p is not None and bool(p.any()) for p in padded):
        parts = [f"the causal part: {'; '.join(parts)}"] if parts else []
        if not all(torch.equal(e[~w], g[~w]) for e, g, w in slices):
            if not all(_fits(g, torch.ones_like(w), *wrong) for _, g, w in slices):
                return None   # the padded columns hold something else: no exact sentence
            parts.append("padded keys are not hidden: AND the causal part with the padding mask")
    return "; ".join(parts) + "." if parts else None


def _slices(expected: torch.Tensor, got: torch.Tensor, padded: torch.Tensor | None):
    """(expected, got, where) for every (T_q, T_k) slice; `where` selects the columns of keys that are not padding."""
    T_q, T_k = expected.shape[-2:]
    e, g = expected.reshape(-1, T_q, T_k), got.reshape(-1, T_q, T_k)
    keep = torch.ones(e.shape[0], T_q, T_k, dtype=torch.bool, device=e.device) if padded is None else \
        (~padded)[:, None, :].expand(-1, T_q, -1)
    return [(e[b], g[b], keep[b]) for b in range(e.shape[0])]


def _candidates():
    """(inverted, form, k) from the simplest: no shift before one, the right form before the others."""
    return [(inv, form, k) for k in (0, 1, -1, 2, -2) for form in FORMS for inv in (False, True)]


def _fits(mask: torch.Tensor, where: torch.Tensor, inverted: bool, form: str, k: int) -> bool:
    T_q, T_k = mask.shape
    tri = torch.ones(T_q, T_k, dtype=torch.bool, device=mask.device).tril(FORMS[form](T_q, T_k) + k)
    return torch.equal((~tri if inverted else tri)[where], mask[where])


def _causal_parts(inverted: bool, form: str, k: int) -> list[str]:
    if inverted and k == -1:   # ~(j <= i - 1) is j >= i
        parts, k = ["your mask is the upper triangle with the diagonal (triu); True = may attend is the lower one"], 0
    else:
        parts = [INVERTED] if inverted else []
    if form == "start":
        parts.append("it is aligned top-left; with T_q != T_k query i sees j <= i + (T_k - T_q)")
    if form == "negated":
        parts.append("the offset has the wrong sign: query i sees j <= i + (T_k - T_q), not j <= i - (T_k - T_q)")
    if k == 1:
        parts.append("it reaches one diagonal too far: query i also sees key i + 1")
    elif k > 1:
        parts.append(f"it reaches {k} diagonals too far: query i also sees keys up to i + {k}")
    elif k == -1:
        parts.append("it hides the diagonal: a position may attend to itself (j <= i, not j < i)")
    elif k < -1:
        parts.append(f"it hides {-k} diagonals: query i sees only keys j <= i - {-k}, not up to j = i itself")
    return parts


# ---------------------------------------------------------------- one failing case

def describe(expected: torch.Tensor, got: torch.Tensor, padded: torch.Tensor | None = None
             ) -> tuple[str, str] | None:
    """("likely" or "observed", a sentence) on how the bool mask `got` differs from `expected` (same shape,
    (..., T_q, T_k)), or None. `padded` ((B, T_k), True at padded keys) lets rows and columns be named by it."""
    for check in (_complement, _transposed, _diagonals, _rows_or_columns):
        if (found := check(expected, got, padded)) is not None:
            return found
    return None


def _complement(expected, got, padded):
    return ("likely", INVERTED + ".") if torch.equal(got, ~expected) else None


def _transposed(expected, got, padded):
    if expected.dim() < 2 or expected.shape[-1] != expected.shape[-2] or torch.equal(expected, expected.mT):
        return None
    if not torch.equal(got, expected.mT):
        return None
    return "likely", ("your mask is transposed: mask[..., i, j] says whether query i (row i) may attend to key j "
                      "(column j).")


def _diagonals(expected, got, padded):
    if expected.dim() < 2 or min(expected.shape[-2:]) < 2:
        return None
    where = (expected ^ got).nonzero()
    offsets = sorted(set((where[:, -1] - where[:, -2]).tolist()))
    if len(offsets) != 1:
        return None
    d = offsets[0]
    name = {0: "the diagonal j = i", 1: "the diagonal j = i + 1, one above the main one",
            -1: "the diagonal j = i - 1, one below the main one"}.get(d, f"the diagonal j = i {'+-'[d < 0]} {abs(d)}")
    says = _direction(expected, got)
    if d > 0 and not bool((expected & ~got).any()):
        says += f": query i also sees the future key i + {d}" if d > 1 else ": query i also sees key i + 1"
    return "observed", f"only on {name}: {says}."


def _rows_or_columns(expected, got, padded):
    if expected.dim() < 2:
        return None
    T_q, T_k = expected.shape[-2:]
    diff = (expected ^ got).reshape(-1, T_q, T_k)
    says = _direction(expected, got)
    if padded is not None and padded.shape == (diff.shape[0], T_k):
        if not bool((diff & ~padded[:, None, :]).any()):
            return "observed", f"only in the columns of padded keys (tokens == pad_id): {says}."
        if T_q == T_k and not bool((diff & ~padded[:, :, None]).any()):
            return "observed", (f"only in the rows of padded queries: {says}; the right mask hides padded keys "
                                f"(columns) and leaves those rows as the causal part makes them.")
    seqs = f" of sequence {_indices(diff.flatten(1).any(1))}" if diff.shape[0] > 1 and \
        not bool(diff.flatten(1).any(1).all()) else ""
    columns, rows = diff.any(1).any(0), diff.any(2).any(0)
    if not bool(columns.all()):
        return "observed", f"only in column{'s' * (int(columns.sum()) > 1)} {_indices(columns)} (keys){seqs}: {says}."
    if not bool(rows.all()):
        return "observed", f"only in row{'s' * (int(rows.sum()) > 1)} {_indices(rows)} (queries){seqs}: {says}."
    return None


def _direction(expected: torch.Tensor, got: torch.Tensor) -> str:
    extra, missing = bool((got & ~expected).any()), bool((expected & ~got).any())
    if extra and not missing:
        return "your mask is True there, where it should be False"
    if missing and not extra:
        return "your mask is False there, where it should be True"
    return "your mask has True and False the other way round there"


def _indices(selected: torch.Tensor) -> str:
    """The True positions of a 1-D bool tensor as ranges: "3..4", "0, 2 and 5..7"."""
    idx = selected.nonzero().flatten().tolist()
    runs: list[list[int]] = []
    for i in idx:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    words = [f"{r[0]}..{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]

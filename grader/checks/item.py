"""What a graded item is: its inputs, its reference, what it may not call and its known mistakes."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Mistake:
    """A plausible wrong implementation (same form as a submission) and what to tell the student.

    ``says`` completes "Likely mistake: ...". When a submission's outputs equal the mistake's outputs
    on every case, the check names it.
    """

    key: str
    says: str
    impl: Any


@dataclass(frozen=True, eq=False)
class Item:
    """A graded item: how to build inputs, the reference, what it may not call, how to compare.

    ``cases(g, seed)`` builds CPU cases from the generator ``g`` (every case names its group);
    ``reference()`` returns the reference in the same form as a submission (a function or an
    nn.Module class), imported lazily from transformer_ref. ``forbidden`` lists dotted names of
    callables the submission may not use; ``forbidden_ops`` the ATen operators behind them that it may not run
    however it reaches them ("aten::native_layer_norm"; a trailing * matches a prefix). ``outputs`` names the returned values, for messages.
    ``tol`` overrides the float tolerances {dtype: (rtol, atol)}. ``members`` (classes) names the
    parameters the checker sets. ``compare_fn(item, cases, outcomes) -> Report``, when set, replaces
    the reference comparison (randomised items). ``mistakes`` is the catalogue of known mistakes.
    ``builds_on`` lists the items of the same notebook that the solution calls (its parts, function items): while
    the item runs, each one the notebook defines is replaced in the submission's namespace by a stand-in that
    runs the part's reference (grader.checks.run.run_student, unless the instructor's --no-substitute), so a
    wrong part costs only its own item; when the student's own version fails its check, the item's report says so.
    ``explain(item, cases, outcomes, impl) -> str | None``, when set, is asked when a value is wrong and no
    catalogued mistake reproduces the outputs (`impl` is the submission when the caller has it, else None: the
    batch grader has only the outcomes from the sandbox). It returns one line for the student: "Likely mistake:
    ..." for what it has shown holds exactly (a mask that is the complement of the right one), "What differs:
    ..." for what it observed (grader/checks/structure.py for masks, wiring.py for layers built of sublayers).
    ``hints`` are what ``hint("<name>")`` prints in a notebook (grader/checks/hints.py), one per call: the idea
    first, then the concrete step; never the solution's code (tests/test_state.py compares them with it).
    """

    name: str
    assignment: str
    kind: str                                   # "function" or "class"
    cases: Callable[[torch.Generator, int], list]
    reference: Callable[[], Any]
    forbidden: tuple[str, ...]
    outputs: tuple[str, ...] = ("output",)
    tol: dict = field(default_factory=dict)
    members: str = ""
    compare_fn: Callable | None = None
    mistakes: tuple[Mistake, ...] = ()
    builds_on: tuple[Item, ...] = ()
    explain: Callable | None = None
    forbidden_ops: tuple[str, ...] = ()
    hints: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"Item({self.name!r}, {self.assignment!r})"


@dataclass(frozen=True)
class Reference:
    """``Reference("attention", "scaled_dot_product_attention")()`` imports and returns
    ``transformer_ref.attention.scaled_dot_product_attention`` (lazily: the registry imports fast)."""

    module: str
    name: str

    def __call__(self) -> Any:
        return getattr(importlib.import_module(f"transformer_ref.{self.module}"), self.name)

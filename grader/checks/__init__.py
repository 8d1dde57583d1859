"""The exercise checks: one module per assignment, holding everything about its graded items (cases,
reference, forbidden shortcuts, known mistakes, ``check_<item>``), over a few shared modules:

    item.py       Item, Mistake                    cases.py    Case, make_cases, random inputs
    shortcuts.py  Tripwires, find_shortcut         run.py      Outcome, run_student
    compare.py    compare, diagnose, grade         report.py   Report, Grade, CheckFailed, assert_passes
    results.py    (Report, GroupResult, Grade and describe/fmt, below compare.py and report.py)
    points.py     POINTS (each item's points)      summary.py  summary: the notebooks' last cell

A notebook's test cell is ``from grader.checks.attention import check_scaled_dot_product_attention``.
This package imports only torch, the standard library and transformer_ref: it runs inside the grading
sandbox and in students' notebooks.
"""

from __future__ import annotations

from grader.checks import (add_norm, attention, attention_at_scale, bert, history, masking, multi_head,
                           positional_encoding, transformer, vit, warmup)
from grader.checks.item import Item

# Chapter order. (`item` below is a function; the module is grader.checks.item: import names from it with
# `from grader.checks.item import Item`, since `import grader.checks.item as m` would give the function.)
_MODULES = (history, positional_encoding, attention, multi_head, masking, add_norm, transformer, bert, vit, warmup,
            attention_at_scale)

ITEMS: dict[str, Item] = {it.name: it for module in _MODULES for it in module.ITEMS}
ASSIGNMENTS: dict[str, tuple[str, ...]] = {module.ASSIGNMENT: tuple(it.name for it in module.ITEMS)
                                           for module in _MODULES}
MODULES: dict[str, str] = {module.ASSIGNMENT: module.__name__ for module in _MODULES}


def item(name: str) -> Item:
    """The graded item called `name` (e.g. "scaled_dot_product_attention")."""
    if name not in ITEMS:
        raise KeyError(f"unknown item {name!r}; known: {', '.join(sorted(ITEMS))}")
    return ITEMS[name]

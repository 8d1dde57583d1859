"""The exercise checks: one module per assignment, holding everything about its graded items (cases,
reference, forbidden shortcuts, known mistakes, ``check_<item>``), over a few shared modules:

    item.py       Item, Mistake                    cases.py    Case, make_cases, random inputs
    shortcuts.py  Tripwires, find_shortcut         run.py      Outcome, run_student
    compare.py    compare, diagnose, grade         report.py   Report, Grade, assert_passes

A notebook's test cell is ``from grader.checks.attention import check_scaled_dot_product_attention``.
This package imports only torch, the standard library and transformer_ref: it runs inside the grading
sandbox and in students' notebooks.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from grader.checks.item import Item

# TEMPORARY while the assignment modules are being written: import those that exist.
_MODULES: list[ModuleType] = []
for _name in ("history", "positional_encoding", "attention", "multi_head", "masking",
              "add_norm", "bert", "vit", "warmup", "transformer"):
    try:
        _MODULES.append(importlib.import_module(f"grader.checks.{_name}"))
    except ModuleNotFoundError as _err:
        if _err.name != f"grader.checks.{_name}":
            raise

ITEMS: dict[str, Item] = {it.name: it for module in _MODULES for it in module.ITEMS}
ASSIGNMENTS: dict[str, tuple[str, ...]] = {module.ASSIGNMENT: tuple(it.name for it in module.ITEMS)
                                           for module in _MODULES}
MODULES: dict[str, str] = {module.ASSIGNMENT: module.__name__ for module in _MODULES}


def item(name: str) -> Item:
    """The graded item called `name` (e.g. "scaled_dot_product_attention")."""
    if name not in ITEMS:
        raise KeyError(f"unknown item {name!r}; known: {', '.join(sorted(ITEMS))}")
    return ITEMS[name]

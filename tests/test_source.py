"""The project's own Python source: no name is defined twice in one scope.

A second `def` of a name silently replaces the first, and everything above that called the first now calls the
second: two tests of greedy_decode once shared a helper name, and four tests checked the wrong helper."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("transformer_ref", "grader", "tests", "benchmarks")
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _overload(node: ast.AST) -> bool:
    """typing.overload stubs and property setters/deleters define a name again on purpose."""
    for deco in getattr(node, "decorator_list", []):
        text = ast.unparse(deco)
        if text.endswith("overload") or text.endswith((".setter", ".deleter")):
            return True
    return False


def redefined(tree: ast.Module) -> list[str]:
    """'scope.name (lines a, b)' for every name that one module or class body defines more than once."""
    found = []
    scopes = [("<module>", tree.body)]
    while scopes:
        where, body = scopes.pop()
        lines = collections.defaultdict(list)
        for node in body:
            if isinstance(node, DEFINITIONS) and not _overload(node):
                lines[node.name].append(node.lineno)
            if isinstance(node, ast.ClassDef):
                scopes.append((node.name, node.body))
        found += [f"{where}.{name} (lines {', '.join(map(str, at))})" for name, at in lines.items() if len(at) > 1]
    return found


def test_redefined_finds_a_second_def_and_spares_overloads():
    tree = ast.parse("def f(): pass\n\nclass A:\n    @property\n    def x(self): pass\n    @x.setter\n"
                     "    def x(self, v): pass\n    def g(self): pass\n    def g(self): pass\n\ndef f(): pass\n")
    assert sorted(redefined(tree)) == ["<module>.f (lines 1, 11)", "A.g (lines 8, 9)"]


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_name_is_defined_twice_in_one_scope(path):
    assert not redefined(ast.parse(path.read_text(), str(path))), redefined(ast.parse(path.read_text()))

"""What every assignment's checks promise, asserted once for all ten assignments.

Each tests/test_checks_<module>.py holds its assignment's data, keyed by Item (ALTERNATIVES and SHORTCUTS
written the way a student would, CHECKS: the check_<name> function of each item) and short parametrized
tests that call the functions below; its assignment-specific tests stay beside them. A helper module, not a
test module: pytest puts tests/ on sys.path, so a test module says `import checks_contract as contract`.
"""

from __future__ import annotations

import pytest

from grader.checks.cases import groups, make_cases
from grader.checks.compare import compare, grade
from grader.checks.report import CheckFailed, check
from grader.checks.run import run_student

# ---------------------------------------------------------------- parameters and small helpers


def item_id(item):
    """The test id of an item: its name."""
    return item.name


def mistake_params(items):
    """(item, mistake) for every catalogued mistake, with ids "item-key" ("item-key-impl" where a key repeats)."""
    params = []
    for item in items:
        keys = [m.key for m in item.mistakes]
        for m in item.mistakes:
            suffix = f"-{m.impl.__name__}" if keys.count(m.key) > 1 else ""
            params.append(pytest.param(item, m, id=f"{item.name}-{m.key}{suffix}"))
    return params


def alternative_params(alternatives):
    """(item, impl) for every valid alternative in {item: [impl, ...]}, with ids "item-impl"."""
    return [pytest.param(item, impl, id=f"{item.name}-{impl.__name__}")
            for item, impls in alternatives.items() for impl in impls]


def shortcut_params(shortcuts):
    """(item, impl, dotted) for every shortcut, with ids "item-dotted"."""
    return [pytest.param(item, impl, dotted, id=f"{item.name}-{dotted}") for item, impl, dotted in shortcuts]


def mistake(item, key):
    """The catalogued mistake of `item` called `key`."""
    return next(m for m in item.mistakes if m.key == key)


def graded(item, impl, seed=0):
    """grade() of the submission `impl` on the cases of `seed`, run the way the grader runs it (watched)."""
    cases = make_cases(item, seed)
    return grade(item, cases, run_student(item, impl, cases))


# ---------------------------------------------------------------- the contract


def assert_assignment_shape(module, assignment, names, alternatives, checks):
    """The assignment has its items (in order), at least five mistakes in all, and for every item: a mistake,
    two alternatives, its check_<name> function, and 2 to 4 named groups of cases."""
    assert module.ASSIGNMENT == assignment, module.ASSIGNMENT
    assert [item.name for item in module.ITEMS] == names, module.ITEMS
    assert set(alternatives) == set(checks) == set(module.ITEMS), "ALTERNATIVES and CHECKS need every item"
    assert sum(len(item.mistakes) for item in module.ITEMS) >= 5, "fewer than five mistakes in all"
    for item in module.ITEMS:
        assert item.assignment == module.ASSIGNMENT and item.mistakes and len(alternatives[item]) >= 2, item.name
        assert checks[item] is getattr(module, f"check_{item.name}"), item.name
        case_groups = groups(make_cases(item, 0))
        assert 2 <= len(case_groups) <= 4 and "basic" not in case_groups, (item.name, case_groups)  # all named


def assert_reference_scores_full_marks(item, seed):
    """The reference passes its own comparison and grade() gives it every group."""
    cases = make_cases(item, seed)
    outcomes = run_student(item, item.reference(), cases, watch=False)
    report = compare(item, cases, outcomes)
    assert report.passed, report.message
    result = grade(item, cases, outcomes)
    assert result.fraction == 1.0 and all(g.passed for g in result.groups), result.message


def assert_mistake_named(item, mistake, check_fn):
    """A catalogued mistake fails, and the message names it; the notebook's check_<name> raises with it."""
    report = check(item, mistake.impl)
    assert not report.passed, f"the mistake {mistake.key!r} of {item.name} passes the check"
    assert report.mistake == mistake.key, report.message
    assert f"Likely mistake: {mistake.says}" in report.message, report.message
    with pytest.raises(CheckFailed, match="Likely mistake"):
        check_fn(mistake.impl)


def assert_alternative_passes(item, impl, check_fn):
    """A valid alternative passes on two seeds, check_<name> accepts it, and grade() gives it full marks."""
    report = check(item, impl, seeds=(0, 1))
    assert report.passed, report.message
    check_fn(impl)  # no exception
    result = graded(item, impl)
    assert result.fraction == 1.0, result.message


def assert_shortcut_scores_zero(item, impl, dotted):
    """Calling a forbidden shortcut fails with a message that names it (`dotted`), and grade() scores 0."""
    report = check(item, impl)
    assert not report.passed and report.shortcut and report.mistake is None, report.message
    assert dotted in report.message and "scores 0" in report.message, report.message
    result = graded(item, impl)
    assert result.fraction == 0.0 and result.shortcut and dotted in result.message, result.message


def assert_cuda_copies_pass(item, impl, watch=True):
    """On the GPU copies of the cases (a group of their own) `impl` scores full marks."""
    cases = make_cases(item, 0, cuda=True)
    assert "on the GPU" in groups(cases), groups(cases)
    result = grade(item, cases, run_student(item, impl, cases, watch=watch))
    assert result.fraction == 1.0, result.message

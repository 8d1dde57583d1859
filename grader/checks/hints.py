"""Hints on demand, in a notebook cell:

    from grader.checks.hints import hint
    hint("causal_mask")      # the idea
    hint("causal_mask")      # the concrete step
    hint(causal_mask)        # the same: a function or class is asked about by its name

Each item's hints are written with its definition (``Item.hints`` in grader/checks/<module>.py): the idea first,
then the concrete step, never the solution's code. Calls are counted per item for as long as the kernel runs;
past the last hint, the last one is shown again with a pointer to the chapter. It is not graded and changes
nothing a check does.
"""

from __future__ import annotations

import difflib
from typing import Any

from grader.checks.results import wrap

_asked: dict[str, int] = {}   # item -> how many of its hints have been shown


def hint(item: Any = None) -> None:
    """Print the next hint for `item` (its name, or the function or class itself); with no argument, how to ask."""
    from grader.checks import ITEMS
    name = getattr(item, "__name__", item)
    if not isinstance(name, str) or name not in ITEMS:
        print(wrap(_unknown(name, sorted(ITEMS))))
        return
    steps = ITEMS[name].hints
    shown = _asked.get(name, 0)
    _asked[name] = shown + 1
    if shown < len(steps):
        kind = "the idea" if shown == 0 else "the concrete step" if shown == len(steps) - 1 else "a step further"
        more = f' Run hint("{name}") again for the next one.' if shown + 1 < len(steps) else ""
        print(wrap(f"Hint {shown + 1} of {len(steps)} for {name} ({kind}): {steps[shown]}{more}"))
    else:
        print(wrap(f"That was the last hint for {name} ({len(steps)} of {len(steps)}): {steps[-1]} The chapter "
                   f"linked at the top of the notebook works it through; the test cell's message says what differs."))


def _unknown(name: Any, known: list[str]) -> str:
    if name is None:
        return 'Ask for a hint with the name of what you are writing, for example hint("causal_mask").'
    close = difflib.get_close_matches(str(name), known, n=1)
    guess = f' Did you mean hint("{close[0]}")?' if close else ""
    return f"There is no graded item called {name!r}.{guess} The items are the function and class names of " \
           f"the notebook's sections."

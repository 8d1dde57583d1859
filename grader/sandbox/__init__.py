"""The trust boundary: everything that makes and runs the sandbox student code runs in.

    limits.py    what one submission may use (the record both sides read)
    bwrap.py     the bubblewrap command line, its environment, starting and probing a sandbox
    seccomp.py   the system-call filter the sandbox runs under
    channel.py   the framed report channel between the harness and the grader
    harness.py   what runs inside: the student's cells, then each graded item on the grader's cases

Nothing in here trusts what comes back out: the host side (grader.execution) parses every frame as
hostile data.
"""

from grader.sandbox.bwrap import HOW_TO_FIX, SandboxUnavailable, probe
from grader.sandbox.limits import GiB, Limits, MiB

__all__ = ["GiB", "HOW_TO_FIX", "Limits", "MiB", "SandboxUnavailable", "probe"]

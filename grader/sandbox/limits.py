"""What one submission may use: the record both the host (grader.execution) and the sandbox's makers read."""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024 ** 3
MiB = 1024 ** 2
HARNESS_MEMORY = 512 * MiB   # the harness after `import torch` holds about 220 MiB resident


@dataclass(frozen=True)
class Limits:
    """What one submission may use. Wall-clock limits are enforced by the grader (grader.execution);
    the others by the kernel inside the sandbox."""

    memory: int = 2 * GiB            # address space of the student's process (RLIMIT_AS); the sandbox's
                                     # cgroup may hold this plus HARNESS_MEMORY, tmpfs and shared memory included
    cpu_seconds: int = 600           # CPU time of one sandbox process (RLIMIT_CPU)
    file_size: int = 64 * MiB        # the largest file it may write (RLIMIT_FSIZE)
    scratch: int = 256 * MiB         # size of each of its tmpfs folders (/tmp, the working folder, /dev/shm)
    pids: int = 256                  # processes and threads in its cgroup (bwrap's two included)
    cell_seconds: float = 60.0       # wall clock for one cell, or for one graded item on all its cases
    submission_seconds: float = 600.0   # wall clock for a whole submission, restarts included

    @property
    def cgroup_memory(self) -> int:
        """What the sandbox's cgroup may hold: the student's memory, and the harness's own (torch's libraries,
        the job, the outcomes) on top."""
        return self.memory + HARNESS_MEMORY

    def describe_memory(self) -> str:
        return f"{self.memory / GiB:g} GiB"

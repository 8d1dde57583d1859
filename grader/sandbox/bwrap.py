"""The sandbox that student code runs in: bubblewrap (Debian's `bubblewrap`), resource limits, a seccomp filter.

Why bubblewrap: it is a single small setuid-free binary in Debian, it needs no daemon, image or root
(unprivileged user namespaces suffice), starts in milliseconds, and gives every isolation the grader
needs in one command line: its own network, PID, IPC and user namespaces, a file system built from
read-only binds of just the Python runtime and the course's two packages, fresh tmpfs scratch folders,
and death with its parent. The kernel limits (setrlimit) and a seccomp filter (passed to bwrap as a
BPF program) cover what namespaces do not: memory, CPU time, file size, and process creation.

`command(...)` is the bwrap command line; `launch` starts a program in it (grader.sandbox.forkserver
starts the zygote that forks each run's harness). With `isolate=False` (the instructor's explicit --no-sandbox)
the same harness runs as a plain child process with the same resource limits and no namespaces.
"""

from __future__ import annotations

import fcntl
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import grader
import transformer_ref
from grader.sandbox.limits import Limits
from grader.sandbox.seccomp import seccomp_program

class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces on this machine."""


# ----------------------------------------------------------------------------- the command line
def _runtime_paths() -> list[str]:
    """Read-only folders the harness needs: the Python installation, the virtual environment, the course's
    two packages (grader: the harness and the checks; transformer_ref: the building blocks students use)."""
    paths = {sys.base_prefix, sys.prefix, str(Path(grader.__file__).parent), str(Path(transformer_ref.__file__).parent)}
    return sorted(p for p in paths if not p.startswith("/usr/"))


def python_path() -> str:
    """PYTHONPATH that finds grader and transformer_ref at the same paths inside and outside the sandbox."""
    return os.pathsep.join(sorted({str(Path(grader.__file__).parent.parent), str(Path(transformer_ref.__file__).parent.parent)}))


def command(argv: list[str], limits: Limits, seccomp_fd: int | None) -> list[str]:
    """The bwrap command that runs `argv` isolated; the seccomp program is read from `seccomp_fd`."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable("bubblewrap (`bwrap`) is not installed")
    cmd = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
           "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        target = Path("/") / link
        if target.is_symlink():
            cmd += ["--symlink", os.readlink(target), f"/{link}"]
        elif target.is_dir():
            cmd += ["--ro-bind", str(target), f"/{link}"]
    cmd += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
            "--ro-bind-try", "/etc/localtime", "/etc/localtime"]
    # The scratch folders first: a runtime folder that lives under /tmp (a checkout there) is bound on top.
    for folder in SCRATCH:
        cmd += ["--size", str(limits.scratch), "--tmpfs", folder]
    cmd += ["--chdir", SCRATCH[0]]
    for path in _runtime_paths():
        cmd += ["--ro-bind", path, path]
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    for dev in sorted(Path("/dev").glob("nvidia*")):   # the GPU, when the grading machine has one
        cmd += ["--dev-bind", str(dev), str(dev)]
    cmd += ["--remount-ro", "/"]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    return cmd + ["--"] + argv


def environment(limits: Limits) -> dict[str, str]:
    """The only environment variables student code sees."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/scratch", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
           "PYTHONPATH": python_path(), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MKL_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    for var in ("CUDA_VISIBLE_DEVICES",):
        if var in os.environ:
            env[var] = os.environ[var]
    return env


def _set_limits(limits: Limits) -> None:
    """In the child, before exec: the kernel's limits, inherited by everything it starts."""
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size, limits.file_size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


SCRATCH = ("/scratch", "/tmp")   # the sandbox's writable folders (sized tmpfs); the first is the working folder


SECCOMP_FD = 10    # where bwrap reads the seccomp program from, in the started process


def launch(argv: list[str], limits: Limits, isolate: bool, fds: dict[int, int], cwd: str) -> subprocess.Popen:
    """Start `argv` (in bwrap when `isolate`) with the limits, the sandbox's environment and `fds` (number in
    the child -> descriptor here); stdin, stdout and stderr are /dev/null: the student's prints never cost
    points and never fill a disk. Its own session, so that killing its process group kills it all."""
    fds = dict(fds)
    program = seccomp_program(new_processes=True) if isolate else None
    if program is not None:
        seccomp_read, seccomp_write = os.pipe()
        os.write(seccomp_write, program)
        os.close(seccomp_write)
        fds[SECCOMP_FD] = seccomp_read
    if isolate:
        argv = command(argv, limits, SECCOMP_FD if program is not None else None)

    def child_setup() -> None:
        _set_limits(limits)
        moved = {number: fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for number, fd in fds.items()}   # out of the way first
        for number, fd in moved.items():
            os.dup2(fd, number)

    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=environment(limits), pass_fds=tuple(fds), preexec_fn=child_setup,
                                start_new_session=True, cwd="/" if isolate else cwd)
    finally:
        if program is not None:
            os.close(fds[SECCOMP_FD])


def probe(limits: Limits) -> None:
    """Start a sandbox that only imports torch; raise SandboxUnavailable with the reason and the fix."""
    program = seccomp_program()
    r, w = os.pipe()
    os.write(w, program or b"")
    os.close(w)
    try:
        argv = command([sys.executable, "-c", "import torch, grader.checks"], limits, r if program else None)
        done = subprocess.run(argv, env=environment(limits), pass_fds=(r,), capture_output=True, text=True,
                              preexec_fn=lambda: _set_limits(limits), timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SandboxUnavailable(str(err)) from err
    finally:
        os.close(r)
    if done.returncode != 0:
        raise SandboxUnavailable((done.stderr.strip() or f"exit status {done.returncode}")[-2000:])


HOW_TO_FIX = (
    "Student code is only run isolated. Install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; "
    "`make test` does it) and allow unprivileged user namespaces (`sysctl kernel.unprivileged_userns_clone=1`, "
    "and on Ubuntu 24.04 `sysctl kernel.apparmor_restrict_unprivileged_userns=0`; in a container, run it "
    "with user namespaces allowed). To grade WITHOUT isolation anyway (only for code you trust), pass "
    "--no-sandbox; grades.csv then says so on every row.")

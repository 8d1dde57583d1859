"""The sandbox that student code runs in: bubblewrap (Debian's `bubblewrap`), a cgroup, resource limits, seccomp.

Why bubblewrap: it is a single small setuid-free binary in Debian, it needs no daemon, image or root
(unprivileged user namespaces suffice), starts in milliseconds, and gives every isolation the grader
needs in one command line: its own network, PID, IPC, cgroup and user namespaces (with no nested user
namespace allowed: `--disable-userns`), a file system built from read-only binds of just the Python
runtime and the course's two packages, sized tmpfs scratch folders (/tmp, /scratch, /dev/shm; /dev itself
read-only), and death with its parent. What namespaces do not cover the kernel does: the sandbox starts
inside a cgroup of its own (grader.sandbox.cgroup: memory that counts tmpfs and shared memory, a pids
limit, a kill nothing survives), setrlimit bounds one process's address space, CPU time and file size,
and a seccomp filter (grader.sandbox.seccomp, built with libseccomp) refuses new processes, namespaces,
mounts, ptrace and the kernel interfaces a notebook never needs.

`command(...)` is the bwrap command line; `launch` starts a program in it, inside a cgroup when given one
(grader.sandbox.forkserver starts the zygote that forks each run's harness); `probe` checks, once per
grading, that all of this works here and says what is missing. With `isolate=False` (the instructor's
explicit --no-sandbox) the same harness runs as a plain child process with the same resource limits, no
namespaces and no cgroup.
"""

from __future__ import annotations

import fcntl
import os
import resource
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import grader
import transformer_ref
from grader.sandbox import cgroup, seccomp
from grader.sandbox.limits import Limits

class SandboxUnavailable(RuntimeError):
    """bubblewrap or libseccomp is missing, or bubblewrap cannot create namespaces on this machine."""


# ----------------------------------------------------------------------------- the command line
def _runtime_paths() -> list[str]:
    """Read-only folders the harness needs: the Python installation, the virtual environment, the course's
    two packages (grader: the harness and the checks; transformer_ref: the building blocks students use)."""
    paths = {sys.base_prefix, sys.prefix, str(Path(grader.__file__).parent), str(Path(transformer_ref.__file__).parent)}
    return sorted(p for p in paths if not p.startswith("/usr/"))


def python_path() -> str:
    """PYTHONPATH that finds grader and transformer_ref at the same paths inside and outside the sandbox."""
    return os.pathsep.join(sorted({str(Path(grader.__file__).parent.parent), str(Path(transformer_ref.__file__).parent.parent)}))


def command(argv: list[str], limits: Limits, seccomp_fd: int) -> list[str]:
    """The bwrap command that runs `argv` isolated; the seccomp program is read from `seccomp_fd`."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable("bubblewrap (`bwrap`) is not installed")
    cmd = [bwrap, "--unshare-all", "--unshare-user", *_disable_userns(bwrap), "--die-with-parent",
           "--new-session", "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
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
    # /dev is a tmpfs bwrap fills with the usual devices: read-only once its own sized /dev/shm is on it
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.scratch), "--tmpfs", "/dev/shm"]
    for dev in sorted(Path("/dev").glob("nvidia*")):   # the GPU, when the grading machine has one
        cmd += ["--dev-bind", str(dev), str(dev)]
    cmd += ["--remount-ro", "/dev", "--remount-ro", "/"]
    return cmd + ["--seccomp", str(seccomp_fd), "--"] + argv


@lru_cache(maxsize=None)
def _disable_userns(bwrap: str) -> list[str]:
    """`--disable-userns` where this bubblewrap has it (0.8 and later); seccomp refuses unshare, setns and
    clone with CLONE_NEWUSER in any case."""
    help_text = subprocess.run([bwrap, "--help"], capture_output=True, text=True).stdout
    return ["--disable-userns"] if "--disable-userns" in help_text else []


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


def containment() -> cgroup.Hierarchy | None:
    """Where sandboxes' cgroups are made in this process; None where none can be (see probe's notice)."""
    try:
        return cgroup.hierarchy()
    except cgroup.CgroupUnavailable:
        return None


SCRATCH = ("/scratch", "/tmp")   # the sandbox's writable folders (sized tmpfs); the first is the working folder
TMPFS = (*SCRATCH, "/dev/shm")   # every sized tmpfs of the sandbox: what the zygote empties after each run
SECCOMP_FD = 10    # where bwrap reads the seccomp program from, in the started process


def launch(argv: list[str], limits: Limits, isolate: bool, fds: dict[int, int], cwd: str,
           group: cgroup.Cgroup | None = None) -> subprocess.Popen:
    """Start `argv` (in bwrap, under the sandbox's seccomp filter, when `isolate`) inside `group` with the
    limits, the sandbox's environment and `fds` (number in the child -> descriptor here); stdin, stdout and
    stderr are /dev/null: the student's prints never cost points and never fill a disk. Its own session, so
    that killing its process group kills it all (and `group.kill()` what left the group)."""
    fds = dict(fds)
    if isolate:
        fds[SECCOMP_FD] = _seccomp_fd()
        argv = command(argv, limits, SECCOMP_FD)

    def child_setup() -> None:
        if group is not None:
            group.enter()
        _set_limits(limits)
        moved = {number: fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for number, fd in fds.items()}   # out of the way first
        for number, fd in moved.items():
            os.dup2(fd, number)

    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=environment(limits), pass_fds=tuple(fds), preexec_fn=child_setup,
                                start_new_session=True, cwd="/" if isolate else cwd)
    finally:
        if isolate:
            os.close(fds[SECCOMP_FD])


def _seccomp_fd() -> int:
    """A pipe's read end holding the sandbox's seccomp program (bwrap reads it whole before it runs anything)."""
    try:
        program = seccomp.program(new_processes=True)
    except seccomp.SeccompUnavailable as err:
        raise SandboxUnavailable(str(err)) from err
    read, write = os.pipe()
    os.write(write, program)
    os.close(write)
    return read


def probe(limits: Limits) -> str | None:
    """Start a sandbox that only imports torch; raise SandboxUnavailable with the reason and the fix.

    Returns None with full containment, or the notice to print once when no cgroup can be made here
    (grading still runs, in bwrap with its rlimits, and the notice says what is lost and how to get one).
    """
    try:
        where = cgroup.hierarchy()
        notice = None
    except cgroup.CgroupUnavailable as err:
        where, notice = None, f"no cgroup for the sandboxes ({err}): {cgroup.LOST}. {cgroup.HOW_TO_DELEGATE}"
    try:
        seccomp.program(new_processes=False)   # the run's filter: the zygote's children load it
    except seccomp.SeccompUnavailable as err:
        raise SandboxUnavailable(str(err)) from err
    seccomp_read = _seccomp_fd()
    group = where.create(limits.cgroup_memory, limits.pids) if where else None

    def child_setup() -> None:
        if group is not None:
            group.enter()
        _set_limits(limits)

    try:
        argv = command([sys.executable, "-c", "import torch, grader.checks"], limits, seccomp_read)
        done = subprocess.run(argv, env=environment(limits), pass_fds=(seccomp_read,), capture_output=True,
                              text=True, preexec_fn=child_setup, timeout=120)
    except (OSError, subprocess.SubprocessError) as err:
        raise SandboxUnavailable(str(err)) from err
    finally:
        os.close(seccomp_read)
        if group is not None:
            group.kill()
            group.remove()
    if done.returncode != 0:
        raise SandboxUnavailable((done.stderr.strip() or f"exit status {done.returncode}")[-2000:])
    return notice


HOW_TO_FIX = (
    "Student code is only run isolated. Install bubblewrap and libseccomp (Debian/Ubuntu: `apt-get install "
    "bubblewrap libseccomp2`; `make test` does it) and allow unprivileged user namespaces (`sysctl kernel.unprivileged_userns_clone=1`, "
    "and on Ubuntu 24.04 `sysctl kernel.apparmor_restrict_unprivileged_userns=0`; in a container, run it "
    "with user namespaces allowed). To grade WITHOUT isolation anyway (only for code you trust), pass "
    "--no-sandbox; grades.csv then says so on every row.")

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

`Limits` says how much a submission may use; `command(...)` is the bwrap command line; `start` starts the
harness (grader.sandbox.harness) in it; `probe` checks, once per run, that all of this works here and
says what is missing. With `isolate=False` (the instructor's explicit --no-sandbox) the same harness runs
as a plain child process with the same resource limits, no namespaces and no cgroup.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
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
    cmd += ["--size", str(limits.scratch), "--tmpfs", "/tmp",
            "--size", str(limits.scratch), "--tmpfs", "/scratch", "--chdir", "/scratch"]
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


@dataclass
class Process:
    """A started harness: its Popen, the read end of its report channel, and its cgroup (None without one)."""

    popen: subprocess.Popen
    channel: int          # file descriptor the grader reads frames from
    group: cgroup.Cgroup | None = None
    peak_memory: int | None = None     # bytes, read from the cgroup when it is killed
    killed_for_memory: bool = False

    def over_memory(self) -> bool:
        """Whether the kernel killed a process of this sandbox for going over its cgroup's memory limit."""
        return self.killed_for_memory or (self.group is not None and self.group.over_memory())

    def kill(self) -> None:
        """Kill the sandbox and everything in it: its cgroup (nothing in it survives), and its process group."""
        if self.group is not None:
            self.group.kill()
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait()
        if self.group is not None:
            self.peak_memory, self.killed_for_memory = self.group.peak_memory(), self.group.over_memory()
            self.group.remove()
            self.group = None
        try:
            os.close(self.channel)
        except OSError:   # closed already (kill is called again in a finally)
            pass


def start(job: bytes, limits: Limits, isolate: bool = True, argv: list[str] | None = None) -> Process:
    """Start `python -m grader.sandbox.harness` (or `argv`) in bwrap and a cgroup of its own when `isolate`,
    hand it `job` on stdin, return at once.

    The harness reports on file descriptor 3 (grader.sandbox.channel); stdout and stderr (the student's
    prints, warnings) are discarded: they never cost points and never fill a disk.
    """
    read_end, write_end = os.pipe()
    argv = argv or [sys.executable, "-s", "-B", "-m", "grader.sandbox.harness"]
    fds = [write_end]
    seccomp_read = None
    group = None
    if isolate:
        seccomp_read = _seccomp_fd()
        fds.append(seccomp_read)
        argv = command(argv, limits, seccomp_read)
        where = containment()
        group = where.create(limits.cgroup_memory, limits.pids) if where else None

    def child_setup() -> None:
        if group is not None:
            group.enter()
        _set_limits(limits)
        os.dup2(write_end, 3)

    stdin_read, stdin_write = os.pipe()
    try:
        popen = subprocess.Popen(argv, stdin=stdin_read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env=environment(limits), pass_fds=(3, *fds), preexec_fn=child_setup,
                                 start_new_session=True, cwd="/" if isolate else tempfile.gettempdir())
    except BaseException:
        if group is not None:
            group.remove()
        raise
    finally:
        for fd in (write_end, stdin_read, *([seccomp_read] if seccomp_read is not None else [])):
            os.close(fd)
    _write_all(stdin_write, job)
    return Process(popen, read_end, group)


def _seccomp_fd() -> int:
    """A pipe's read end holding the seccomp program (bwrap reads it whole before it runs anything)."""
    try:
        program = seccomp.program()
    except seccomp.SeccompUnavailable as err:
        raise SandboxUnavailable(str(err)) from err
    read, write = os.pipe()
    os.write(write, program)
    os.close(write)
    return read


def _write_all(fd: int, data: bytes) -> None:
    """Write the job to the harness's stdin and close it (a harness that died early is not an error here)."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


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

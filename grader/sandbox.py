"""The sandbox that student code runs in: bubblewrap (Debian's `bubblewrap`), resource limits, a seccomp filter.

Why bubblewrap: it is a single small setuid-free binary in Debian, it needs no daemon, image or root
(unprivileged user namespaces suffice), starts in milliseconds, and gives every isolation the grader
needs in one command line: its own network, PID, IPC and user namespaces, a file system built from
read-only binds of just the Python runtime and the course's two packages, fresh tmpfs scratch folders,
and death with its parent. The kernel limits (setrlimit) and a seccomp filter (passed to bwrap as a
BPF program) cover what namespaces do not: memory, CPU time, file size, and process creation.

`Limits` says how much a submission may use; `command(...)` is the bwrap command line; `Sandbox.start`
starts the harness (grader.harness) in it. With `isolate=False` (the instructor's explicit --no-sandbox)
the same harness runs as a plain child process with the same resource limits and no namespaces.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grader
import transformer_ref

GiB = 1024 ** 3
MiB = 1024 ** 2


@dataclass(frozen=True)
class Limits:
    """What one submission may use. Wall-clock limits are enforced by the grader (grader.execution);
    the others by the kernel inside the sandbox."""

    memory: int = 2 * GiB            # address space of the student's process (RLIMIT_AS)
    cpu_seconds: int = 600           # CPU time of one sandbox process (RLIMIT_CPU)
    file_size: int = 64 * MiB        # the largest file it may write (RLIMIT_FSIZE)
    scratch: int = 256 * MiB         # size of each of its tmpfs folders (/tmp and the working folder)
    cell_seconds: float = 60.0       # wall clock for one cell, or for one graded item on all its cases
    submission_seconds: float = 600.0   # wall clock for a whole submission, restarts included

    def describe_memory(self) -> str:
        return f"{self.memory / GiB:g} GiB"


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces on this machine."""


# ----------------------------------------------------------------------------- seccomp: no new processes
# A classic-BPF program over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}: fork, vfork and
# clone without CLONE_THREAD fail with EPERM (threads stay allowed: torch and Python need them), clone3
# fails with ENOSYS (glibc then falls back to clone, whose flags this filter can read), and any other
# architecture's system calls (i386 through int 0x80, the x32 ABI) fail.
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000
_EPERM, _ENOSYS = 1, 38
_CLONE_THREAD = 0x00010000
_ARCHES = {  # audit arch -> (clone, clone3, fork-like system calls)
    "x86_64": (0xC000003E, 56, 435, (57, 58)),
    "aarch64": (0xC00000B7, 220, 435, ()),
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def seccomp_program(machine: str | None = None) -> bytes | None:
    """The BPF program for this machine's architecture, or None for one this module does not know."""
    arch = _ARCHES.get(machine or os.uname().machine)
    if arch is None:
        return None
    audit_arch, clone, clone3, forks = arch
    deny, nosys, allow = _ERRNO | _EPERM, _ERRNO | _ENOSYS, _ALLOW
    body = [_insn(_LD_W_ABS, 0)]                                   # A = nr
    body.append(_insn(_JGE, 0x40000000, jt=0, jf=1))             # x32 ABI
    body.append(_insn(_RET, deny))
    for nr in forks:
        body.append(_insn(_JEQ, nr, jt=0, jf=1))
        body.append(_insn(_RET, deny))
    body.append(_insn(_JEQ, clone3, jt=0, jf=1))
    body.append(_insn(_RET, nosys))
    body.append(_insn(_JEQ, clone, jt=0, jf=1 + 2))
    body.append(_insn(_LD_W_ABS, 16))                              # A = low 32 bits of args[0] (flags)
    body.append(_insn(_JSET, _CLONE_THREAD, jt=1, jf=0))
    body.append(_insn(_RET, deny))
    body.append(_insn(_RET, allow))
    head = [_insn(_LD_W_ABS, 4), _insn(_JEQ, audit_arch, jt=1, jf=0), _insn(_RET, deny)]
    return b"".join(head + body)


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
    cmd += ["--size", str(limits.scratch), "--tmpfs", "/tmp",
            "--size", str(limits.scratch), "--tmpfs", "/scratch", "--chdir", "/scratch"]
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


@dataclass
class Process:
    """A started harness: its Popen and the read end of its report channel."""

    popen: subprocess.Popen
    channel: int          # file descriptor the grader reads frames from

    def kill(self) -> None:
        """Kill the sandbox and everything in it (its own process group and PID namespace)."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait()
        try:
            os.close(self.channel)
        except OSError:   # closed already (kill is called again in a finally)
            pass


def start(job: bytes, limits: Limits, isolate: bool = True) -> Process:
    """Start `python -m grader.harness` (in bwrap when `isolate`), hand it `job` on stdin, return at once.

    The harness reports on file descriptor 3 (grader.harness.Channel); stdout and stderr (the student's
    prints, warnings) are discarded: they never cost points and never fill a disk.
    """
    read_end, write_end = os.pipe()
    argv = [sys.executable, "-s", "-B", "-m", "grader.harness"]
    fds = [write_end]
    seccomp_read = None
    if isolate:
        program = seccomp_program()
        if program is not None:
            seccomp_read, seccomp_write = os.pipe()
            os.write(seccomp_write, program)
            os.close(seccomp_write)
            fds.append(seccomp_read)
        argv = command(argv, limits, seccomp_read)

    def child_setup() -> None:
        _set_limits(limits)
        os.dup2(write_end, 3)

    stdin_read, stdin_write = os.pipe()
    popen = subprocess.Popen(argv, stdin=stdin_read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=environment(limits), pass_fds=(3, *fds), preexec_fn=child_setup,
                             start_new_session=True, cwd="/" if isolate else tempfile.gettempdir())
    for fd in (write_end, stdin_read, *([seccomp_read] if seccomp_read is not None else [])):
        os.close(fd)
    _write_all(stdin_write, job)
    return Process(popen, read_end)


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

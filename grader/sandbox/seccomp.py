"""The system-call filters student code runs under, both built with libseccomp.

    program(new_processes=True)    the sandbox's filter, loaded by bwrap (`--seccomp FD`) before it starts the
                                   zygote (grader.sandbox.zygote), which forks one child per run
    program(new_processes=False)   the run's filter: the same rules, and no new process; the zygote's child
                                   loads it (stacked on the sandbox's) before it runs any student code
    describe(new_processes)        either one as libseccomp's pseudo-filter code (PFC), for reading and tests

Built with libseccomp, the library systemd, Docker and Flatpak use, rather than by hand: it knows every
architecture's system-call numbers, checks the architecture and the x32 ABI itself, and compiles the
argument tests. Bindings: ctypes over Debian's libseccomp2 (`libseccomp.so.2`, present on every Debian and
Ubuntu machine), because the dozen calls used here fit in this file; Debian's python3-seccomp is built for
the system Python, not for a virtual environment, and the PyPI wrappers add a dependency for the same
dozen lines.

Both filters are built here, on the host, and the run's reaches the zygote as a prepared BPF program on a
file descriptor: the child loads it with one prctl right after fork. Building it in the child would run
libseccomp (malloc, a temporary file) in a process forked from a multi-threaded one (torch's threads),
where only async-signal-safe calls are safe, and would need libseccomp inside the sandbox.

Both allow by default (a notebook calls hundreds of system calls; an allow list would break on the next
glibc or torch) and deny, with EPERM, what no notebook needs and what reaches past the sandbox:
  - other processes: ptrace, process_vm_readv/writev, pidfd_getfd, kcmp, process_madvise (ptrace on the
    sandbox's PID 1 could clear its parent-death signal and outlive the grader);
  - new namespaces: unshare, setns, clone with a CLONE_NEW* flag (a nested user namespace could mount a
    tmpfs of any size), and every mount call; clone3 fails with ENOSYS, so glibc falls back to clone, whose
    flags a filter can read;
  - memory outside the memory limits: memfd_create (its pages count against no rlimit; in a cgroup they
    are charged, but without one they are not, and a notebook never needs one), SysV shared memory and
    message queues (shmget, msgget), userfaultfd;
  - kernel attack surface a notebook never touches: io_uring, bpf, perf_event_open, the key store,
    modules, kexec, reboot, swap, acct, quotactl, file handles (name_to_handle_at, open_by_handle_at),
    any personality call but the query (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC).
The run's filter also denies new processes: fork, vfork, clone without CLONE_THREAD (threads stay
allowed: torch and Python need them), and execve/execveat (the harness is Python already; a program it
became would no longer be). Any other architecture's system calls (i386 through int 0x80, the x32 ABI)
kill the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import tempfile
from functools import lru_cache

# From <seccomp.h> (stable ABI of libseccomp 2.x).
_ACT_KILL_PROCESS, _ACT_ALLOW = 0x80000000, 0x7FFF0000
_FLTATR_ACT_BADARCH = 2
_CMP_NE, _CMP_MASKED_EQ = 1, 7


def _errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


CLONE_THREAD = 0x00010000
CLONE_NEW = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
             "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
             "CLONE_NEWNET": 0x40000000}
PERSONALITY_QUERY = 0xFFFFFFFF

# Denied outright with EPERM (a name this architecture does not have is skipped by libseccomp).
DENIED = (
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp", "process_madvise",
    # namespaces and mounts
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr",
    # memory outside the limits
    "memfd_create", "memfd_secret", "shmget", "msgget", "userfaultfd",
    # kernel interfaces a notebook never needs
    "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open",
    "keyctl", "add_key", "request_key", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct",
    "quotactl", "quotactl_fd", "name_to_handle_at", "open_by_handle_at", "lookup_dcookie",
    "iopl", "ioperm", "syslog", "settimeofday", "clock_settime", "clock_adjtime",
)
NO_SUCH_CALL = ("clone3",)   # ENOSYS: the caller falls back to clone
NEW_PROCESSES = ("fork", "vfork", "execve", "execveat")   # denied in a run (and clone without CLONE_THREAD)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_export_pfc.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


class SeccompUnavailable(RuntimeError):
    """libseccomp is not installed, or refused the filter."""


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise SeccompUnavailable(f"libseccomp: {what} failed: {os.strerror(-rc)}")


def _rule(lib, ctx, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr == -1:    # __NR_SCMP_ERROR: libseccomp does not know the name at all
        raise SeccompUnavailable(f"libseccomp does not know the system call {name}")
    array = (_ArgCmp * max(len(cmps), 1))(*[_ArgCmp(*c) for c in cmps])
    _check(lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array), f"the rule on {name}")


def _build(lib, new_processes: bool) -> int:
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("libseccomp: seccomp_init failed")
    try:
        _check(lib.seccomp_attr_set(ctx, _FLTATR_ACT_BADARCH, _ACT_KILL_PROCESS), "the architecture check")
        deny = _errno(errno.EPERM)
        for name in DENIED:
            _rule(lib, ctx, deny, name)
        for name in NO_SUCH_CALL:
            _rule(lib, ctx, _errno(errno.ENOSYS), name)
        if not new_processes:   # clone without CLONE_THREAD is a process
            for name in NEW_PROCESSES:
                _rule(lib, ctx, deny, name)
            _rule(lib, ctx, deny, "clone", (0, _CMP_MASKED_EQ, CLONE_THREAD, 0))
        for flag in CLONE_NEW.values():
            _rule(lib, ctx, deny, "clone", (0, _CMP_MASKED_EQ, flag, flag))
        # personality: only the query (libseccomp allows one test per argument in a rule, so setting even the
        # default persona is refused; nothing a notebook runs sets one)
        _rule(lib, ctx, deny, "personality", (0, _CMP_NE, PERSONALITY_QUERY, 0))
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return ctx


def _export(export: str, new_processes: bool) -> bytes:
    lib = _library()
    if lib is None:
        raise SeccompUnavailable("libseccomp (`libseccomp.so.2`, Debian's libseccomp2) is not installed")
    ctx = _build(lib, new_processes)
    try:
        with tempfile.TemporaryFile() as f:
            _check(getattr(lib, export)(ctx, f.fileno()), export)
            f.seek(0)
            return f.read()
    finally:
        lib.seccomp_release(ctx)


@lru_cache(maxsize=2)
def program(new_processes: bool) -> bytes:
    """A filter as a classic-BPF program (struct sock_filter[]): what `bwrap --seccomp FD` reads
    (new_processes=True, the sandbox's) and what the zygote's child loads (False, the run's)."""
    return _export("seccomp_export_bpf", new_processes)


def describe(new_processes: bool) -> str:
    """A filter in libseccomp's pseudo-filter code: one block per architecture and system call."""
    return _export("seccomp_export_pfc", new_processes).decode()

"""Containment by the kernel: the seccomp filter, the sandbox's cgroup, sized tmpfs, and a kill nothing survives.

Both filters (the sandbox's, under which the zygote may fork, and the run's, which forbids new processes)
are read twice without a sandbox: in libseccomp's own decoding (PFC), and by running the exported BPF
program on each system call here. Then each denied call is made for real in a run of the zygote
(grader.sandbox.forkserver, as grading makes one), a normal torch workload runs unaffected, memory written
where RLIMIT_AS does not see it (/dev/shm, /tmp, /dev, a memfd, a nested namespace's tmpfs) is bounded and
gone before the next run, the cgroup stops a tmpfs larger than the memory limit, and a run that tries to
outlive its sandbox is gone once its zygote is stopped or killed. Last, a class with a shared-memory hog and
a survivor is graded through `python -m grader grade`.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_containment.py
"""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import torch

from grader.sandbox import bwrap, cgroup, forkserver, seccomp
from grader.sandbox.channel import Reader
from grader.sandbox.limits import GiB, MiB, Limits

ROOT = Path(__file__).resolve().parents[1]


def mount_points(folder: str) -> list[str]:
    """What the sandbox's `folder` holds when it is empty: the folders bubblewrap makes there to bind the course and
    the Python runtime at their host paths (a checkout under /tmp shows its top folder in the sandbox's /tmp)."""
    bound = {ROOT, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    return sorted({p.relative_to(folder).parts[0] for p in bound if p.is_relative_to(folder) and p != Path(folder)})


EMPTY = {"/dev/shm": mount_points("/dev/shm"), "/tmp": mount_points("/tmp"), "/scratch": []}
X86_64 = os.uname().machine == "x86_64"
AUDIT_ARCH_X86_64, AUDIT_ARCH_I386 = 0xC000003E, 0x40000003
ALLOW, KILL_PROCESS = 0x7FFF0000, 0x80000000
EPERM, ENOSYS = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
LIMITS = Limits(cell_seconds=60.0, submission_seconds=120.0)
CLONE_THREADS = 0x003D0F00      # what glibc's pthread_create passes (CLONE_VM | CLONE_FS | ... | CLONE_THREAD ...)

# The calls the brief names, each with what the filter must answer.
MUST_DENY = ("ptrace", "process_vm_readv", "process_vm_writev", "io_uring_setup", "io_uring_enter",
             "io_uring_register", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
             "unshare", "setns", "mount", "umount2", "pivot_root", "fsopen", "fsmount", "move_mount", "open_tree",
             "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon",
             "swapoff", "acct", "quotactl", "name_to_handle_at", "open_by_handle_at", "memfd_create")
NEW_PROCESSES = ("fork", "vfork", "execve", "execveat")   # the run's filter only
MUST_ALLOW = ("read", "write", "openat", "mmap", "munmap", "mprotect", "futex", "sched_getaffinity",
              "getrandom", "clock_gettime", "prctl", "setsid", "socket", "rt_sigaction")


def _nr(name: str) -> int:
    return seccomp._library().seccomp_syscall_resolve_name(name.encode())


def _run_bpf(program: bytes, nr: int, arch: int = AUDIT_ARCH_X86_64, args: tuple[int, ...] = ()) -> int:
    """What the classic-BPF `program` returns for one system call (the subset of cBPF seccomp programs use)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    a = x = pc = 0
    memory = [0] * 16
    for _ in range(10_000):
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:                                 # ld  [k]
            a = struct.unpack_from("<I", data, k)[0]
        elif code == 0x06:                               # ret k
            return k
        elif code == 0x16:                               # ret a
            return a
        elif code & 0x07 == 0x05:                        # jumps
            operand = x if code & 0x08 else k
            if code & 0xF0 == 0x00:
                pc += k
                continue
            taken = {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand, 0x40: bool(a & operand)}[code & 0xF0]
            pc += jt if taken else jf
        elif code == 0x54:                               # and k
            a &= k
        elif code == 0x00:                               # ld k
            a = k
        elif code == 0x02:                               # st M[k]
            memory[k] = a
        elif code == 0x60:                               # ld M[k]
            a = memory[k]
        elif code == 0x07:                               # tax
            x = a
        elif code == 0x87:                               # txa
            a = x
        else:
            raise AssertionError(f"instruction {code:#x} not known to this test's interpreter")
    raise AssertionError("the program does not end")


# ------------------------------------------------------------------------------------------------
# The filters, decoded (no sandbox)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("new_processes", [True, False], ids=["sandbox", "run"])
def test_libseccomp_decodes_a_deny_rule_for_each_call(new_processes):
    pfc = seccomp.describe(new_processes)
    denied = MUST_DENY + (() if new_processes else NEW_PROCESSES)
    for name in denied:
        block = pfc.split(f'# filter for syscall "{name}"')
        assert len(block) == 2, f"{name} has no rule in the filter"
        assert block[1].split("# filter for")[0].count("action ERRNO(1);") >= 1, (name, block[1][:200])
    for name in (NEW_PROCESSES if new_processes else ()):
        assert f'syscall "{name}"' not in pfc, f"the zygote must be allowed {name}"
    assert 'syscall "clone3"' in pfc and "action ERRNO(38);" in pfc
    assert "# invalid architecture action\naction KILL_PROCESS;" in pfc, "another architecture is killed"


@pytest.mark.skipif(not X86_64, reason="the system-call numbers and audit architecture below are x86_64's")
@pytest.mark.parametrize("new_processes", [True, False], ids=["sandbox", "run"])
def test_the_exported_program_answers_each_call(new_processes):
    program = seccomp.program(new_processes)
    for name in MUST_DENY:
        assert _run_bpf(program, _nr(name)) == EPERM, name
    for name in MUST_ALLOW:
        assert _run_bpf(program, _nr(name)) == ALLOW, name
    for name in NEW_PROCESSES:
        assert _run_bpf(program, _nr(name)) == (ALLOW if new_processes else EPERM), name
    assert _run_bpf(program, _nr("clone3")) == ENOSYS
    clone = _nr("clone")
    process = ALLOW if new_processes else EPERM
    assert _run_bpf(program, clone, args=(CLONE_THREADS,)) == ALLOW, "a thread"
    assert _run_bpf(program, clone, args=(0x11,)) == process, "a process (SIGCHLD, what fork() passes)"
    assert _run_bpf(program, clone, args=(0x11 | (1 << 40),)) == process, "high bits do not hide a process"
    for flag in seccomp.CLONE_NEW.values():
        assert _run_bpf(program, clone, args=(CLONE_THREADS | flag,)) == EPERM, hex(flag)
        assert _run_bpf(program, clone, args=(flag | 0x11,)) == EPERM, hex(flag)
    personality = _nr("personality")
    assert _run_bpf(program, personality, args=(0xFFFFFFFF,)) == ALLOW, "the query"
    assert _run_bpf(program, personality, args=(0x0040000,)) == EPERM, "ADDR_NO_RANDOMIZE"
    assert _run_bpf(program, 0, arch=AUDIT_ARCH_I386) == KILL_PROCESS, "int 0x80"
    assert _run_bpf(program, 0x40000000 | _nr("ptrace")) == KILL_PROCESS, "the x32 ABI"
    assert _run_bpf(program, 0x40000000) == KILL_PROCESS, "the x32 ABI's read"


# ------------------------------------------------------------------------------------------------
# Inside a real sandbox: a run of the zygote (grader.sandbox.forkserver), as grading makes one
# ------------------------------------------------------------------------------------------------

def _needs_cgroup() -> cgroup.Hierarchy:
    where = bwrap.containment()
    if where is None:
        try:
            cgroup.hierarchy()
        except cgroup.CgroupUnavailable as err:
            pytest.skip(f"no cgroup can be made here: {err}")
    return where


@pytest.fixture(scope="module")
def server():
    server = forkserver.ForkServer(LIMITS, isolate=True)
    yield server
    server.stop()


def _job(sources: list[str]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"items": [], "cells": [{"id": f"c{k}", "source": s} for k, s in enumerate(sources)],
                "skip_cells": [], "cases": {}, "import_transformers": False}, buffer)
    return buffer.getvalue()


def _reports(run: forkserver.Run, cells: int, seconds: float = 120) -> list[dict]:
    """What each of the first `cells` cells reported (a cell reports by raising REPORT + JSON; {}: it did not),
    once the last of them has ended or the run has."""
    found: list[dict] = []
    reader, deadline = Reader(run.channel), time.monotonic() + seconds
    while len(found) < cells and (frame := reader.frame(deadline)) is not None:
        event = json.loads(frame[1])
        if frame[0] == b"E" and "cell" in event:
            error = event["error"] or ""
            found.append(json.loads(error.split("REPORT", 1)[1]) if "REPORT" in error else {"error": error})
    return found + [{}] * (cells - len(found))


def _run(server: forkserver.ForkServer, code: str, seconds: float = 120) -> tuple[dict, forkserver.Run]:
    """`code` as the one cell of a run; what it reported, and the ended run."""
    run = server.start(_job([code]))
    try:
        report = _reports(run, 1, seconds)[0]
        run.wait(30)
        return report, run
    finally:
        run.kill()


REPORT = '''
import json, os
class Report(Exception):
    pass
def report(value):
    raise Report("REPORT" + json.dumps(value))
'''

SYSCALLS = REPORT + '''
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CALLS = {  # name: (x86_64 number, arguments)
    "ptrace": (101, (16, 1, 0, 0)),                 # PTRACE_ATTACH to the sandbox's PID 1
    "ptrace_zygote": (101, (16, os.getppid(), 0, 0)),
    "process_vm_readv": (310, (os.getppid(), 0, 0, 0, 0, 0)),
    "io_uring_setup": (425, (8, 0)),
    "bpf": (321, (0, 0, 0)),
    "perf_event_open": (298, (0, 0, -1, -1, 0)),
    "userfaultfd": (323, (0,)),
    "keyctl": (250, (0, 0, 0, 0, 0)),
    "unshare": (272, (0x10000000,)),                # CLONE_NEWUSER
    "unshare_mount": (272, (0x00020000,)),          # CLONE_NEWNS
    "setns": (308, (0, 0)),
    "mount": (165, (0, 0, 0, 0, 0)),
    "memfd_create": (319, (0, 0)),
    "fork": (57, ()),
    "vfork_as_clone": (56, (0x4111, 0, 0, 0, 0)),   # CLONE_VM | CLONE_VFORK | SIGCHLD
    "clone3": (435, (0, 0)),
    "clone_process": (56, (17, 0, 0, 0, 0)),        # SIGCHLD: what fork() asks clone for
    "execve": (59, (0, 0, 0)),                      # EFAULT if it were allowed
    "execveat": (322, (-100, 0, 0, 0, 0)),
}
result = {}
for name, (nr, args) in CALLS.items():
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    result[name] = [rc, errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))]
for name, call in (("os.fork", os.fork), ("os.execv", lambda: os.execv("/usr/bin/true", ["true"])),
                   ("posix_spawn", lambda: os.posix_spawn("/usr/bin/true", ["true"], {}))):
    try:
        call()
        result[name] = "ran"
    except OSError as err:
        result[name] = errno.errorcode[err.errno]
report(result)
'''


@pytest.mark.slow
@pytest.mark.skipif(not X86_64, reason="the system-call numbers in the sandboxed script are x86_64's")
def test_each_denied_call_is_refused_in_a_run(server):
    result, _ = _run(server, SYSCALLS)
    assert "error" not in result and result, result
    for name, (rc, code) in ((n, v) for n, v in result.items() if not n.startswith(("os.", "posix"))):
        expected = "ENOSYS" if name == "clone3" else "EPERM"
        assert (rc, code) == (-1, expected), f"{name}: returned {rc} with {code}"
    assert (result["os.fork"], result["os.execv"], result["posix_spawn"]) == ("EPERM",) * 3, result


SANDBOX_ONLY = '''
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
result = {"ptrace": libc.ptrace(16, 1, 0, 0), "unshare": libc.unshare(0x10000000),
          "memfd_create": libc.memfd_create(b"x", 0)}
pid = os.fork()
if pid == 0:
    os._exit(7)
result["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
os.write(3, json.dumps(result).encode())
'''


@pytest.mark.slow
def test_the_zygotes_sandbox_is_filtered_too_and_may_fork():
    """bwrap loads the sandbox's filter before the zygote starts: the zygote may fork, nothing else."""
    read, write = os.pipe()
    try:
        popen = bwrap.launch([sys.executable, "-s", "-B", "-c", SANDBOX_ONLY], LIMITS, True, {3: write},
                             cwd=bwrap.SCRATCH[0])
    finally:
        os.close(write)
    try:
        assert popen.wait(timeout=60) == 0
        result = json.loads(os.read(read, 4096))
    finally:
        os.close(read)
    assert result == {"ptrace": -1, "unshare": -1, "memfd_create": -1, "fork": 7}, result


TORCH_WORKLOAD = REPORT + '''
import concurrent.futures, math, torch
torch.manual_seed(0)
torch.set_num_threads(2)
a, b = torch.randn(256, 256), torch.randn(256, 256)
product = (a @ b).sum().item()
weights = torch.softmax(torch.randn(4, 8, 8), dim=-1)
x = torch.randn(32, 16, requires_grad=True)
w = torch.randn(16, 4, requires_grad=True)
loss = torch.nn.functional.cross_entropy(x @ w, torch.randint(0, 4, (32,)))
loss.backward()
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    sums = list(pool.map(lambda i: float((torch.randn(128, 128) @ torch.randn(128, 128)).sum()), range(8)))
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(20, 3)), batch_size=4)
report({"product": math.isfinite(product), "rows": torch.allclose(weights.sum(-1), torch.ones(4, 8)),
        "grad": x.grad is not None and w.grad.shape == (16, 4), "threads": len(sums), "batches": len(list(loader))})
'''


@pytest.mark.slow
def test_a_normal_torch_workload_is_unaffected(server):
    result, run = _run(server, TORCH_WORKLOAD)
    assert result == {"product": True, "rows": True, "grad": True, "threads": 8, "batches": 5}, result
    assert not run.over_memory()


# Writes up to 1 GiB (in files of 32 MiB: RLIMIT_FSIZE bounds one file) where RLIMIT_AS does not look.
FILL = REPORT + '''
import ctypes, os
CHUNK = b"x" * (32 * 2 ** 20)
def fill(folder, total=2 ** 30):
    written = 0
    try:
        for i in range(total // len(CHUNK)):
            with open(os.path.join(folder, f"fill-{i}"), "wb") as f:
                f.write(CHUNK)
            written += len(CHUNK)
        return [written, None]
    except OSError as err:
        return [written, type(err).__name__ + ": " + (err.strerror or "")]
result = {folder: fill(folder) for folder in ("/dev/shm", "/tmp", "/dev", "/scratch")}
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.memfd_create(b"hog", 0)
result["memfd"] = [fd, os.strerror(ctypes.get_errno())] if fd < 0 else [fd, "created"]
if libc.unshare(0x10000000 | 0x00020000) == 0:            # a user and mount namespace of its own
    result["nested"] = [libc.mount(b"none", b"/tmp", b"tmpfs", 0, b"size=8g"), "unshared"]
else:
    result["nested"] = [-1, os.strerror(ctypes.get_errno())]
report(result)
'''
LEFT = REPORT + 'report({folder: os.listdir(folder) for folder in ("/dev/shm", "/tmp", "/scratch")})'


@pytest.mark.slow
def test_memory_outside_the_address_space_is_bounded_and_emptied_after_each_run(server):
    result, run = _run(server, FILL)
    assert result and "error" not in result, f"the run reported {result} (killed for memory: {run.over_memory()})"
    for folder in ("/dev/shm", "/tmp", "/scratch"):
        written, error = result[folder]
        assert written <= LIMITS.scratch and error and "No space left" in error, (folder, result[folder])
    assert result["/dev"][0] == 0 and "Read-only" in result["/dev"][1], result["/dev"]
    assert result["memfd"][0] == -1, result["memfd"]
    assert result["nested"][0] == -1, result["nested"]
    group = server.group
    if group is not None:
        assert group.peak_memory() <= LIMITS.cgroup_memory, group.peak_memory()
    left, _ = _run(server, LEFT)
    assert left == EMPTY, f"the next run sees {left}"
    assert server.group is group, "the same zygote ran both"


TMP_HOG = REPORT + '''
CHUNK = b"x" * (32 * 2 ** 20)
for i in range(127):                      # 4 GiB of files in /tmp, which may hold 4 GiB
    with open(f"/tmp/hog-{i}", "wb") as f:
        f.write(CHUNK)
report({"wrote": 64})                     # never reached
'''


@pytest.mark.slow
def test_the_cgroup_counts_tmpfs_and_kills_at_its_limit():
    """A tmpfs larger than the memory limit: the cgroup, not the tmpfs size, stops the run, and says so."""
    _needs_cgroup()
    limits = Limits(scratch=4 * GiB, cell_seconds=60.0, submission_seconds=120.0)   # the cgroup: 2.5 GiB
    hogged = forkserver.ForkServer(limits, isolate=True)
    try:
        report, run = _run(hogged, TMP_HOG)
        assert report == {}, report
        assert run.returncode in (-9, None), run.returncode   # the run killed, or the zygote with it
        assert run.over_memory(), "the kernel killed for memory"
        group = hogged.group
        if group is not None:                                   # the zygote lived on: the next run has it all
            assert group.peak_memory() <= limits.cgroup_memory + 16 * MiB, group.peak_memory()
        left, _ = _run(hogged, LEFT)
        assert left == EMPTY, left
        print(f"the hog's run ended with {run.returncode} (None: its zygote was killed and restarted)")
    finally:
        hogged.stop()


# Clears its parent-death signal, leaves the zygote's session, tries ptrace on PID 1 and on the zygote, starts
# threads and ignores SIGTERM and SIGHUP; the next cell keeps the process alive (after killing the zygote,
# in the variant).
SURVIVOR = REPORT + """
import ctypes, os, signal, threading, time
libc = ctypes.CDLL(None, use_errno=True)
tried = {"pdeathsig": libc.prctl(1, 0, 0, 0, 0)}          # PR_SET_PDEATHSIG 0: no signal when the zygote dies
try:
    os.setsid()
    tried["setsid"] = "new session"
except OSError as err:
    tried["setsid"] = err.strerror
tried["ptrace_pid1"] = libc.ptrace(16, 1, 0, 0)          # PTRACE_ATTACH to bwrap's PID 1, to clear its own
tried["ptrace_zygote"] = libc.ptrace(16, os.getppid(), 0, 0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
for _ in range(8):
    threading.Thread(target=lambda: [time.sleep(0.05) for _ in iter(int, 1)]).start()
report(tried)
"""
STAY = {"stopped": "import time\nwhile True:\n    time.sleep(1)",
        "zygote_killed": "import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\nwhile True:\n    time.sleep(1)"}


@pytest.mark.slow
@pytest.mark.parametrize("how", sorted(STAY))
def test_nothing_of_a_survivor_outlives_its_sandbox(how):
    """`stopped`: the grader stops the zygote while the run survives; `zygote_killed`: the run kills its own
    zygote, so that nothing would wait for it. Either way its cgroup is killed and removed."""
    _needs_cgroup()
    survived = forkserver.ForkServer(LIMITS, isolate=True)
    try:
        run = survived.start(_job([SURVIVOR, STAY[how]]))
        tried = _reports(run, 1, 60)[0]
        assert tried.get("ptrace_pid1") == -1 and tried["ptrace_zygote"] == -1 and tried["pdeathsig"] == 0, tried
        group = survived.group
        members = group.members()
        assert len(members) >= 3, f"bwrap, the zygote and the run are in the cgroup: {members}"
        if how == "stopped":
            survived.stop()
        else:
            assert run.wait(30) is None, "the zygote died: no exit status"
        run.kill()
        assert survived.group is None
        assert not _alive(members), "a member of the cgroup is still running"
        assert all(not d.exists() for d in group.dirs.values()), "the cgroup is removed"
        again, _ = _run(survived, LEFT)
        assert again == EMPTY, again
    finally:
        survived.stop()


def test_a_cgroup_left_by_a_dead_grading_process_is_killed_and_removed(monkeypatch):
    where = _needs_cgroup()
    gone = subprocess.Popen(["true"])
    gone.wait()
    with monkeypatch.context() as patch:          # a cgroup as a worker killed with kill -9 would leave it
        patch.setattr(cgroup.os, "getpid", lambda: gone.pid)
        group = where.create(64 * MiB, 8)
    left = subprocess.Popen(["sleep", "600"], preexec_fn=group.enter)
    try:
        assert group.members() == [left.pid]
        assert group.dirs["memory"] in where.remove_stale()
        assert left.wait(timeout=10) == -9
        assert all(not d.exists() for d in group.dirs.values())
    finally:
        left.kill()
        left.wait()
        if group.dirs["memory"].exists():
            group.remove()


def test_the_exit_reason_names_the_memory_limit_when_the_cgroup_killed():
    from grader.execution import _exit_reason

    assert "over the memory limit of 2 GiB" in _exit_reason(137, Limits(), over_memory=True)
    assert "over the memory limit of 2 GiB" in _exit_reason(None, Limits(), over_memory=True)
    assert "crashed (SIGBUS)" in _exit_reason(-7, Limits())


def _alive(pids: list[int], seconds: float = 5.0) -> list[int]:
    """Those of `pids` still running after `seconds` (a killed process has left its cgroup while it exits, and
    is then a zombie until whoever inherited it reaps it: neither holds memory or runs)."""
    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
    deadline = time.monotonic() + seconds
    while [p for p in pids if running(p)] and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if running(p)]


def _sleeping(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in ps if line.strip() == f"sleep {marker}"]


# ------------------------------------------------------------------------------------------------
# cgroup v2, on a directory tree shaped like a delegated subtree (this machine has v1)
# ------------------------------------------------------------------------------------------------

def test_v2_moves_the_grader_into_a_leaf_and_enables_memory_and_pids(tmp_path, monkeypatch):
    """The no-internal-processes rule: a delegated cgroup with processes in it gets a leaf for them first."""
    here = tmp_path / "user.slice" / "grader.scope"
    here.mkdir(parents=True)
    (here / "cgroup.controllers").write_text("cpu memory pids\n")
    (here / "cgroup.subtree_control").write_text("\n")
    (here / "cgroup.procs").write_text("101\n102\n")
    moved = []

    def write(path: Path, text: str) -> None:
        if path.name == "cgroup.procs":
            moved.append(int(text))
            (here / "cgroup.procs").write_text("".join(f"{p}\n" for p in _listed(here) if p != int(text)))
        path.write_text(text)
    monkeypatch.setattr(cgroup, "_write", write)
    monkeypatch.setattr(cgroup, "_mounts", lambda: [(str(tmp_path), "cgroup2", {"rw"})])
    monkeypatch.setattr(cgroup, "_own_paths", lambda: {"": "/user.slice/grader.scope"})
    found = cgroup._v2()
    assert found == cgroup.Hierarchy(2, {"memory": here, "pids": here})
    assert moved == [101, 102] and (here / cgroup.HOST_LEAF).is_dir()
    assert (here / "cgroup.subtree_control").read_text() == "+memory +pids"
    # a worker started later runs in the leaf: its sandboxes go beside it, not under it
    monkeypatch.setattr(cgroup, "_own_paths", lambda: {"": f"/user.slice/grader.scope/{cgroup.HOST_LEAF}"})
    (here / "cgroup.subtree_control").write_text("memory pids\n")
    assert cgroup._v2() == found


def test_v2_says_what_is_missing(tmp_path, monkeypatch):
    (tmp_path / "cgroup.controllers").write_text("hugetlb\n")
    monkeypatch.setattr(cgroup, "_mounts", lambda: [(str(tmp_path), "cgroup2", {"rw"})])
    monkeypatch.setattr(cgroup, "_own_paths", lambda: {"": "/"})
    with pytest.raises(cgroup.CgroupUnavailable, match="does not offer the memory and pids controllers"):
        cgroup._v2()


def _listed(here: Path) -> list[int]:
    return [int(p) for p in (here / "cgroup.procs").read_text().split()]


@pytest.mark.slow
def test_the_probe_says_what_is_lost_without_a_cgroup(monkeypatch):
    def unavailable():
        raise cgroup.CgroupUnavailable("no cgroup v2 file system is mounted; no cgroup v1 memory hierarchy")
    monkeypatch.setattr(cgroup, "hierarchy", unavailable)
    notice = bwrap.probe(Limits())
    assert notice and "not by --memory" in notice and "Delegate=yes" in notice and "Slurm" in notice, notice


# ------------------------------------------------------------------------------------------------
# Through `python -m grader grade`
# ------------------------------------------------------------------------------------------------

# Fills every folder it can write (4 GiB asked of each, 32 MiB a file), then takes memory until it is stopped.
SHM_HOG = '''import os
def _fill(folder, total=4 * 2 ** 30):
    chunk = b"x" * (32 * 2 ** 20)
    try:
        for i in range(total // len(chunk)):
            with open(os.path.join(folder, f"hog-{i}"), "wb") as f:
                f.write(chunk)
    except OSError:
        pass
for _folder in ("/dev/shm", "/dev", "/tmp", "."):
    _fill(_folder)
def _take():
    blocks = []
    while True:
        blocks.append(torch.ones(2 ** 26))   # 256 MiB at a time
_take()'''
# Clears its parent-death signal, tries to attach to the sandbox's PID 1, and becomes a sleeping program that
# holds the grader's channel open.
SURVIVE = '''import ctypes, os
_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl(1, 0, 0, 0, 0)
_libc.ptrace(16, 1, 0, 0)
os.execvp("sleep", ["sleep", "{MARKER}"])'''


class _SharedMemory:
    """The host's shared memory (Shmem in /proc/meminfo: tmpfs and shm pages) sampled while a run lasts."""

    def __init__(self) -> None:
        self.baseline = self.peak = self._now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def _now() -> int:
        line = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("Shmem:"))
        return int(line.split()[1]) * 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._now())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.baseline


@pytest.mark.slow
def test_grading_a_hog_and_a_survivor(tmp_path):
    from test_sandbox_attacks import (ASSIGNMENT, CLASS, FULL, NONE, Context, _read_rows, edited, grade, item_scores,
                                      submit, with_cell)

    marker = str(800000 + uuid.uuid4().int % 99999)
    students = {"correct": CLASS["correct"][0], "shm_hog": edited("dot_product_attention", before=SHM_HOG),
                "survivor": with_cell(SURVIVE.replace("{MARKER}", marker))}
    ctx = Context(tmp_path / "submitted", tmp_path / "graded", "unused", 9)
    submit(ctx.submissions, students, ctx)
    shared = _SharedMemory()
    proc = grade(ctx.submissions, ctx.out, workers=2)
    grown = shared.stop()
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rows = _read_rows(ctx.out)
    assert set(rows) == set(students) and all(r["status"] == "graded" for r in rows.values()), rows
    scores = item_scores(ctx.out, students)
    assert scores["correct"] == FULL
    assert scores["shm_hog"][0] == 0.0, scores
    page = (ctx.out / "feedback" / "shm_hog" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
    assert "memory limit of 2 GiB" in page, page[-3000:]
    assert scores["survivor"] == NONE, "it uses ctypes"
    assert not _sleeping(marker), "the survivor outlived its sandbox"
    # each of 2 sandboxes at once holds at most its three sized tmpfs folders (/tmp, /scratch, /dev/shm)
    bound = 2 * 3 * Limits().scratch + 256 * MiB
    assert grown <= bound, f"the host's shared memory grew by {grown / MiB:.0f} MiB (bound {bound / MiB:.0f} MiB)"
    print(f"host shared memory grew by at most {grown / MiB:.0f} MiB while grading")

"""Containment by the kernel: the seccomp filter, the sandbox's cgroup, sized tmpfs, and a kill nothing survives.

The filter is read twice without a sandbox: in libseccomp's own decoding (PFC), and by running the exported
BPF program on each system call here. Then each denied call is made for real inside a sandbox (through
grader.sandbox.bwrap's own command line), a normal torch workload runs unaffected, memory written where
RLIMIT_AS does not see it (/dev/shm, /tmp, /dev, a memfd, a nested namespace's tmpfs) is bounded, and a
process that tries to outlive its sandbox is gone after `Process.kill()`. Last, a class with a shared-memory
hog and a survivor is graded through `python -m grader grade`.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_containment.py
"""

from __future__ import annotations

import errno
import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from grader.sandbox import bwrap, cgroup, seccomp
from grader.sandbox.limits import GiB, MiB, Limits

ROOT = Path(__file__).resolve().parents[1]
X86_64 = os.uname().machine == "x86_64"
AUDIT_ARCH_X86_64, AUDIT_ARCH_I386 = 0xC000003E, 0x40000003
ALLOW, KILL_PROCESS = 0x7FFF0000, 0x80000000
EPERM, ENOSYS = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
CLONE_THREADS = 0x003D0F00      # what glibc's pthread_create passes (CLONE_VM | CLONE_FS | ... | CLONE_THREAD ...)

# The calls the brief names, each with what the filter must answer.
MUST_DENY = ("ptrace", "process_vm_readv", "process_vm_writev", "io_uring_setup", "io_uring_enter",
             "io_uring_register", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
             "unshare", "setns", "mount", "umount2", "pivot_root", "fsopen", "fsmount", "move_mount", "open_tree",
             "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon",
             "swapoff", "acct", "quotactl", "name_to_handle_at", "open_by_handle_at", "memfd_create", "fork",
             "vfork")
MUST_ALLOW = ("read", "write", "openat", "mmap", "munmap", "mprotect", "futex", "execve", "sched_getaffinity",
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
# The filter, decoded (no sandbox)
# ------------------------------------------------------------------------------------------------

def test_libseccomp_decodes_a_deny_rule_for_each_call():
    pfc = seccomp.describe()
    for name in MUST_DENY:
        block = pfc.split(f'# filter for syscall "{name}"')
        assert len(block) == 2, f"{name} has no rule in the filter"
        assert block[1].split("# filter for")[0].count("action ERRNO(1);") >= 1, (name, block[1][:200])
    assert 'syscall "clone3"' in pfc and "action ERRNO(38);" in pfc
    assert "# invalid architecture action\naction KILL_PROCESS;" in pfc, "another architecture is killed"


@pytest.mark.skipif(not X86_64, reason="the system-call numbers and audit architecture below are x86_64's")
def test_the_exported_program_answers_each_call():
    program = seccomp.program()
    for name in MUST_DENY:
        assert _run_bpf(program, _nr(name)) == EPERM, name
    for name in MUST_ALLOW:
        assert _run_bpf(program, _nr(name)) == ALLOW, name
    assert _run_bpf(program, _nr("clone3")) == ENOSYS
    clone = _nr("clone")
    assert _run_bpf(program, clone, args=(CLONE_THREADS,)) == ALLOW, "a thread"
    assert _run_bpf(program, clone, args=(0x11,)) == EPERM, "a process (SIGCHLD, what fork() passes)"
    assert _run_bpf(program, clone, args=(0x11 | (1 << 40),)) == EPERM, "high bits do not hide a process"
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
# Inside a real sandbox
# ------------------------------------------------------------------------------------------------

def _sandboxed(code: str, limits: Limits = Limits(), *extra: str) -> bwrap.Process:
    """`code` started by grader.sandbox.bwrap.start in a sandbox of its own; it reports on file descriptor 3."""
    return bwrap.start(b"", limits, True, [sys.executable, "-s", "-B", "-c", code, *extra])


def _report(process: bwrap.Process, seconds: float = 120) -> dict:
    """The JSON object the sandbox writes on its channel, once it is whole ({} when the sandbox ends first)."""
    text, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.channel], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(process.channel, 1 << 16) if ready else b""
        if not chunk:
            break
        text += chunk
        try:
            return json.loads(text)
        except ValueError:
            continue
    return {}


def _run(code: str, limits: Limits = Limits(), seconds: float = 120) -> tuple[dict, bwrap.Process]:
    process = _sandboxed(code, limits)
    try:
        return _report(process, seconds), process
    finally:
        process.kill()


def _needs_cgroup() -> cgroup.Hierarchy:
    where = bwrap.containment()
    if where is None:
        try:
            cgroup.hierarchy()
        except cgroup.CgroupUnavailable as err:
            pytest.skip(f"no cgroup can be made here: {err}")
    return where


REPORT = '''
import json, os
def report(value):
    os.write(3, json.dumps(value).encode())
'''

SYSCALLS = REPORT + '''
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CALLS = {  # name: (x86_64 number, arguments)
    "ptrace": (101, (16, 1, 0, 0)),                 # PTRACE_ATTACH to the sandbox's PID 1
    "process_vm_readv": (310, (1, 0, 0, 0, 0, 0)),
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
    "clone3": (435, (0, 0)),
    "clone_process": (56, (17, 0, 0, 0, 0)),        # SIGCHLD: what fork() asks clone for
}
result = {}
for name, (nr, args) in CALLS.items():
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    result[name] = [rc, errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))]
try:
    os.fork()
    result["os.fork"] = "forked"
except OSError as err:
    result["os.fork"] = errno.errorcode[err.errno]
report(result)
'''


@pytest.mark.slow
@pytest.mark.skipif(not X86_64, reason="the system-call numbers in the sandboxed script are x86_64's")
def test_each_denied_call_is_refused_inside_the_sandbox():
    result, _ = _run(SYSCALLS)
    assert result, "the sandbox reported nothing"
    for name, (rc, code) in ((n, v) for n, v in result.items() if n != "os.fork"):
        expected = "ENOSYS" if name == "clone3" else "EPERM"
        assert (rc, code) == (-1, expected), f"{name}: returned {rc} with {code}"
    assert result["os.fork"] == "EPERM"


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
def test_a_normal_torch_workload_is_unaffected():
    result, _ = _run(TORCH_WORKLOAD)
    assert result == {"product": True, "rows": True, "grad": True, "threads": 8, "batches": 5}, result


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


@pytest.mark.slow
def test_memory_outside_the_address_space_is_bounded():
    limits = Limits()
    result, process = _run(FILL, limits)
    assert result, f"the sandbox reported nothing (killed for memory: {process.over_memory()})"
    for folder in ("/dev/shm", "/tmp", "/scratch"):
        written, error = result[folder]
        assert written <= limits.scratch and error and "No space left" in error, (folder, result[folder])
    assert result["/dev"][0] == 0 and "Read-only" in result["/dev"][1], result["/dev"]
    assert result["memfd"][0] == -1, result["memfd"]
    assert result["nested"][0] == -1, result["nested"]
    if bwrap.containment() is not None:
        assert process.peak_memory is not None and process.peak_memory <= limits.cgroup_memory, process.peak_memory


TMP_HOG = REPORT + '''
import os
report({"started": True})
CHUNK = b"x" * (32 * 2 ** 20)
for i in range(64):                       # 2 GiB of files in /tmp, which may hold 4 GiB
    with open(f"/tmp/hog-{i}", "wb") as f:
        f.write(CHUNK)
os.write(3, b"]")                         # never reached: the JSON above would not parse
'''


@pytest.mark.slow
def test_the_cgroup_counts_tmpfs_and_kills_at_its_limit():
    """A tmpfs larger than the memory limit: the cgroup, not the tmpfs size, stops it."""
    _needs_cgroup()
    limits = Limits(memory=512 * MiB, scratch=4 * GiB)
    process = _sandboxed(TMP_HOG, limits)
    try:
        report = _report(process)
        code = process.popen.wait(timeout=60)
        assert report == {"started": True}, report
        assert process.over_memory(), "the kernel killed for memory"
        assert code in (-9, 137), code
    finally:
        process.kill()
    assert process.peak_memory <= limits.cgroup_memory + 16 * MiB, process.peak_memory


SURVIVOR = REPORT + """
import ctypes, os, signal, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
tried = {"pdeathsig": libc.prctl(1, 0, 0, 0, 0)}          # PR_SET_PDEATHSIG 0: no signal when bwrap dies
try:
    os.setsid()
    tried["setsid"] = "new session"
except OSError as err:
    tried["setsid"] = err.strerror
tried["ptrace_pid1"] = libc.ptrace(16, 1, 0, 0)          # PTRACE_ATTACH to bwrap's PID 1, to clear its own
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
for _ in range(8):
    threading.Thread(target=lambda: [time.sleep(0.05) for _ in iter(int, 1)]).start()
report(tried)
os.close(3)
if sys.argv[2] == "exec":
    os.execvp("sleep", ["sleep", sys.argv[1]])            # the harness's process, now a sleeping program
while True:                                               # or Python itself, with its threads running
    time.sleep(1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["exec", "threads"])
def test_nothing_outlives_process_kill(how):
    _needs_cgroup()
    marker = str(900000 + uuid.uuid4().int % 99999)
    process = _sandboxed(SURVIVOR, Limits(), marker, how)
    group = process.group
    try:
        tried = _report(process, 60)
        assert tried["ptrace_pid1"] == -1 and tried["pdeathsig"] == 0, tried
        deadline = time.monotonic() + 20
        while how == "exec" and not _sleeping(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        members = group.members()
        assert len(members) >= 3, f"bwrap, its PID 1 and the survivor are in the cgroup: {members}"
        if how == "exec":
            assert _sleeping(marker), "the survivor is running before the kill"
    finally:
        process.kill()
    assert not _sleeping(marker), "a process of the sandbox outlived Process.kill()"
    assert not _alive(members), "a member of the cgroup is still running"
    assert all(not d.exists() for d in group.dirs.values()), "the cgroup is removed"


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

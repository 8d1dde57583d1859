"""Inside the sandbox: a warm process that imports torch and the course once, then forks one child per run.

    python -m grader.sandbox.zygote FOLDER...     (started by grader.sandbox.forkserver, in bwrap)

Starting Python and importing torch takes about a second, most of what grading one notebook costs; a
fork of a process that has done it takes milliseconds. The zygote never runs student code and never
holds a student's data: each job goes straight from the grader to the child through a pipe the grader
made for it. The child puts itself under the per-run restrictions (the seccomp program that forbids
new processes, read once at start from file descriptor 4; death with the zygote) and then is the
harness: job on stdin, reports on file descriptor 3 (grader.sandbox.harness). After each child the
zygote empties the FOLDERs (the sandbox's writable tmpfs folders; the first is the children's working
folder) and removes System V IPC objects, so nothing of one run is there for the next. One child at a time.

The control socket (file descriptor 3, SOCK_SEQPACKET, one message a datagram):
    zygote -> grader   b"ready"                      imports done
    grader -> zygote   b"run" + 2 descriptors        the job's read end, the report channel's write end
    zygote -> grader   b"started"
    grader -> zygote   b"kill"                       stop the running child now
    zygote -> grader   b"exit" + int32               the child ended: Popen.returncode's convention
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import socket
import struct
import sys

import grader.checks  # noqa: F401  (what every run needs: torch, transformer_ref, the checks)
from grader.sandbox import harness

CONTROL_FD, FILTER_FD = 3, 4
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP = 1, 4, 38, 22
_SECCOMP_MODE_FILTER = 2
_IPC_RMID = 0
_libc = ctypes.CDLL(None, use_errno=True)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def _load_filter(program: bytes) -> None:
    """Put this process under the classic-BPF seccomp `program` (8 bytes an instruction); none if empty."""
    if not program:
        return
    prog = _SockFprog(len(program) // 8, program)
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
            _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        os._exit(112)   # never run student code without the filter


def _child(job_fd: int, channel_fd: int, program: bytes) -> None:
    """The forked child: stdin = the job, fd 3 = the report channel, nothing else open; then the harness."""
    os.dup2(job_fd, 0)
    os.dup2(channel_fd, CONTROL_FD)
    os.closerange(CONTROL_FD + 1, 1 << 16)
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:   # the zygote died between fork and prctl
        os._exit(1)
    _load_filter(program)
    sys.stdin = open(0, closefd=False)
    try:
        harness.main()
    except BaseException:   # the harness itself failed: the grader reports the exit status
        os._exit(70)
    os._exit(0)   # no interpreter shutdown: it would wait for threads the student left running


def _empty(folder: str, mode: int) -> None:
    """Remove everything in `folder` and give it back its `mode` (a run may have made things unwritable)."""
    def fix_and_retry(function, path, _exc) -> None:
        try:
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            function(path)
        except OSError:
            pass

    try:
        entries = os.listdir(folder)
    except OSError:
        return
    os.chmod(folder, mode)
    for name in entries:
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, onerror=fix_and_retry)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


def _remove_ipc() -> None:
    """System V shared memory, semaphores and message queues of this IPC namespace (the sandbox's own)."""
    for table, call in (("shm", _libc.shmctl), ("sem", _libc.semctl), ("msg", _libc.msgctl)):
        try:
            with open(f"/proc/sysvipc/{table}") as f:
                ids = [int(line.split()[1]) for line in f.readlines()[1:] if line.strip()]
        except (OSError, ValueError, IndexError):
            continue
        for ipc_id in ids:
            if table == "sem":
                call(ipc_id, 0, _IPC_RMID, None)
            else:
                call(ipc_id, _IPC_RMID, None)


def _status(wait_status: int) -> int:
    """A wait status as Popen.returncode: the exit code, or minus the signal."""
    return -os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else os.WEXITSTATUS(wait_status)


def _supervise(control: socket.socket, pid: int) -> int:
    """Wait for the child to end, killing it when the grader says so; its Popen-style return code."""
    pidfd = os.pidfd_open(pid)
    try:
        while True:
            ready = select.select([control, pidfd], [], [])[0]
            if control in ready:
                message = control.recv(64)
                if message in (b"kill", b""):
                    os.kill(pid, signal.SIGKILL)
            if pidfd in ready or control in ready:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return _status(status)
    finally:
        os.close(pidfd)


def serve(control: socket.socket, program: bytes, scratch: list[str]) -> None:
    modes = {folder: os.stat(folder).st_mode & 0o7777 for folder in scratch}
    control.send(b"ready")
    while True:
        message, fds, _, _ = socket.recv_fds(control, 64, 2)
        if message != b"run" or len(fds) != 2:
            return   # the grader closed the socket (or sent something this zygote does not know)
        job_fd, channel_fd = fds
        pid = os.fork()
        if pid == 0:
            control.close()
            _child(job_fd, channel_fd, program)
        os.close(job_fd)
        os.close(channel_fd)
        control.send(b"started")
        code = _supervise(control, pid)
        for folder, mode in modes.items():
            _empty(folder, mode)
        _remove_ipc()
        os.chdir(scratch[0])
        control.send(b"exit" + struct.pack(">i", code))


def main() -> None:
    _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)   # a child (same uid) cannot read this process's memory
    with os.fdopen(FILTER_FD, "rb") as f:
        program = f.read()
    control = socket.socket(fileno=CONTROL_FD)
    sys.stdin = open(os.devnull)
    scratch = sys.argv[1:]
    os.chdir(scratch[0])
    serve(control, program, scratch)


if __name__ == "__main__":
    main()

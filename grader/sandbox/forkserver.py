"""The host's side of a warm sandbox: one zygote per grading worker, one forked child per run.

`ForkServer.start(job)` hands `job` to a fresh child of the zygote (grader.sandbox.zygote) and returns a
`Run`: the read end of its report channel, `wait(timeout)` for its return code and `kill()`. The zygote
is started on first use (bwrap, the limits, the sandbox's seccomp filter, which allows fork; about a
second to import torch) and again whenever it has died, answers late or was killed with a run that would
not stop. Everything a run does stays in its child: the zygote only forks, waits and cleans up, and never
sees a job's contents. The child loads the run's filter (grader.sandbox.seccomp: no new processes), which
the host builds and hands the zygote on a file descriptor.

Each zygote's sandbox lives in a cgroup of its own (grader.sandbox.cgroup), made here before bwrap starts:
its memory limit counts the run's tmpfs files and shared memory (the zygote empties them after each run,
which gives their memory back), its pids limit counts every thread. When the zygote is stopped or dies,
the cgroup is killed (nothing a run started or kept alive survives) and removed. A run the kernel killed
for memory says so: `Run.over_memory()`. Without a cgroup (none can be made here: probe's notice says what
is lost) the sandbox runs with its rlimits and sized tmpfs only.
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile

from grader.sandbox import bwrap, cgroup, seccomp
from grader.sandbox.limits import Limits

START_SECONDS = 180.0   # importing torch on a loaded 2-core machine
ANSWER_SECONDS = 10.0   # for "started" and for a killed child's "exit"


class ZygoteDied(RuntimeError):
    """The zygote ended or stopped answering; the next start() starts a new one."""


class Run:
    """One child of the zygote: `channel` is the read end of its reports (closed by kill())."""

    def __init__(self, server: ForkServer, channel: int) -> None:
        self.server, self.channel = server, channel
        self.returncode: int | None = None
        self._ended = False
        self._group = server.group
        self._oom_kills = self._group.oom_kills() if self._group is not None else 0

    def over_memory(self) -> bool:
        """Whether the kernel killed a process of the sandbox for memory while this run lasted (the run
        itself, or the zygote when the run's memory pushed it over)."""
        return self._group is not None and self._group.oom_kills() > self._oom_kills

    def wait(self, timeout: float) -> int | None:
        """The child's return code (Popen's convention), or None if the zygote does not say in time."""
        if not self._ended:
            self.returncode = self.server.receive_exit(timeout)
            self._ended = True
        return self.returncode

    def kill(self) -> None:
        """Stop the child now (through the zygote, or by killing the whole sandbox when it does not answer)."""
        if not self._ended:
            self.server.kill_child()
            self._ended = True
        try:
            os.close(self.channel)
        except OSError:   # closed already (kill is called again in a finally)
            pass


class ForkServer:
    """A zygote in its sandbox, started on first use and restarted when it dies."""

    def __init__(self, limits: Limits, isolate: bool) -> None:
        self.limits, self.isolate = limits, isolate
        self._popen: subprocess.Popen | None = None
        self._control: socket.socket | None = None
        self._scratch: tempfile.TemporaryDirectory | None = None
        self.group: cgroup.Cgroup | None = None   # the running zygote's sandbox's cgroup

    # -- the zygote ----------------------------------------------------------------------------------
    def _start(self) -> None:
        here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            program = seccomp.program(new_processes=False) if self.isolate else b""
        except seccomp.SeccompUnavailable as err:
            raise bwrap.SandboxUnavailable(str(err)) from err
        filter_read, filter_write = os.pipe()
        os.write(filter_write, program)   # a few hundred bytes: within the pipe's buffer
        os.close(filter_write)
        if self.isolate:
            scratch = list(bwrap.TMPFS)
            where = bwrap.containment()
            self.group = where.create(self.limits.cgroup_memory, self.limits.pids) if where else None
        else:   # --no-sandbox: a private folder of its own, never the host's /tmp
            self._scratch = tempfile.TemporaryDirectory(prefix="grader-zygote-")
            scratch = [self._scratch.name]
        argv = [sys.executable, "-s", "-B", "-m", "grader.sandbox.zygote", *scratch]
        try:
            self._popen = bwrap.launch(argv, self.limits, self.isolate, {3: there.fileno(), 4: filter_read},
                                       cwd=scratch[0], group=self.group)
        except BaseException:
            here.close()
            self.stop()
            raise
        finally:
            there.close()
            os.close(filter_read)
        self._control = here
        if self._receive(START_SECONDS) != b"ready":
            self.stop()
            raise ZygoteDied("the sandbox did not start (python, torch or the course could not be imported)")

    def stop(self) -> None:
        """Kill the zygote's sandbox and everything in it (its cgroup: whatever left the process group too)."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self.group is not None:
            self.group.kill()
        if self._popen is not None:
            try:
                os.killpg(self._popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._popen.wait()
            self._popen = None
        if self.group is not None:
            self.group.oom_kills()   # read before it goes: a Run asks after its zygote died for memory
            self.group.remove()
            self.group = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def _receive(self, timeout: float) -> bytes | None:
        """The zygote's next message, or None when it closed the socket or said nothing in time."""
        assert self._control is not None
        if not select.select([self._control], [], [], timeout)[0]:
            return None
        try:
            return self._control.recv(64) or None
        except OSError:
            return None

    # -- runs ----------------------------------------------------------------------------------------
    def start(self, job: bytes) -> Run:
        """A fresh child of the zygote running the harness on `job`."""
        for attempt in (1, 2):   # a zygote that died since the last run is replaced once
            if self._control is None:
                self._start()
            channel_read, channel_write = os.pipe()
            job_read, job_write = os.pipe()
            try:
                socket.send_fds(self._control, [b"run"], [job_read, channel_write])
                started = self._receive(ANSWER_SECONDS) == b"started"
            except OSError:
                started = False
            finally:
                os.close(job_read)
                os.close(channel_write)
            if started:
                _write_all(job_write, job)
                return Run(self, channel_read)
            os.close(job_write)
            os.close(channel_read)
            self.stop()
        raise ZygoteDied("the sandbox's zygote died twice before it could start a run")

    def receive_exit(self, timeout: float) -> int | None:
        message = self._receive(timeout) if self._control is not None else None
        if message is None or not message.startswith(b"exit") or len(message) != 8:
            self.stop()
            return None
        return struct.unpack(">i", message[4:])[0]

    def kill_child(self) -> None:
        try:
            assert self._control is not None
            self._control.send(b"kill")
        except (OSError, AssertionError):
            self.stop()
            return
        self.receive_exit(ANSWER_SECONDS)


def _write_all(fd: int, data: bytes) -> None:
    """Write the job to the child's stdin and close it (a child that died early is not an error here)."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


_SERVERS: dict[tuple[Limits, bool], ForkServer] = {}


def shared(limits: Limits, isolate: bool) -> ForkServer:
    """This process's fork server for these limits (a grading worker keeps one for all its submissions)."""
    key = (limits, isolate)
    if key not in _SERVERS:
        _SERVERS[key] = ForkServer(limits, isolate)
    return _SERVERS[key]


@atexit.register
def _stop_all() -> None:
    for server in _SERVERS.values():
        server.stop()

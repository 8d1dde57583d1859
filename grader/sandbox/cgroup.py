"""Each sandbox in a cgroup of its own: a memory limit that counts tmpfs and shared memory, a pids limit,
and a kill that nothing in the sandbox survives.

    hierarchy()          where this process may make cgroups (v2 delegated subtree, or v1 as root);
                         raises CgroupUnavailable with what is missing
    Hierarchy.create()   a new cgroup with the limits, made by the host before the sandbox starts
    Hierarchy.remove_stale()   what a grading process killed with kill -9 left behind (run by hierarchy())
    Cgroup.enter()       called in the child before exec (preexec): the sandbox starts inside it
    Cgroup.kill()        every process in it, then `Cgroup.remove()`
    Cgroup.peak_memory(), Cgroup.over_memory()   what it used, and whether the kernel killed for memory

Why a cgroup: RLIMIT_AS bounds one process's address space, but pages in a tmpfs (/tmp, /dev/shm) and
shared memory belong to no address space; the memory controller charges them to the cgroup of the process
that wrote them, so `memory.max` bounds everything a sandbox makes the host hold. And a cgroup is a set of
processes no member can leave (it cannot see the cgroup file system), so killing the cgroup kills whatever
a submission started or kept alive (a cleared parent-death signal, a new session, a stray thread).

cgroup v2: the current process's cgroup (from /proc/self/cgroup) must be writable and offer memory and pids
(a delegated subtree: systemd `Delegate=yes`, a container's cgroup namespace, a Slurm job's cgroup). By the
no-internal-processes rule a cgroup that holds processes cannot give controllers to children, so the
grader's own processes move into a leaf `grader-host` first; sandboxes go beside it. Killed with
`cgroup.kill`. cgroup v1 (memory, pids and freezer hierarchies, writable as root): one directory per
hierarchy under the current process's own path; killed by freezing, SIGKILL to every member, thawing,
until none is left.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

HOST_LEAF = "grader-host"     # v2: where the grader's own processes go when their cgroup must delegate
_serial = itertools.count()


class CgroupUnavailable(RuntimeError):
    """No cgroup this process may make sandboxes' cgroups in (the reason says what is missing)."""


def _read(path: Path) -> str:
    return path.read_text()


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _members(path: Path) -> list[int]:
    try:
        return [int(line) for line in _read(path / "cgroup.procs").split()]
    except FileNotFoundError:
        return []


def _keyed(path: Path) -> dict[str, int]:
    """A flat keyed file ("oom_kill 1" per line) as a dict; {} when it is not there."""
    try:
        return {k: int(v) for k, v in (line.split() for line in _read(path).splitlines() if line.strip())}
    except (FileNotFoundError, ValueError):
        return {}


def _rmdir(path: Path, seconds: float = 5.0) -> None:
    """Remove a cgroup whose last members are exiting (EBUSY until the kernel has let them go)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if err.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@dataclass
class Cgroup:
    """One sandbox's cgroup: `dirs` maps a controller to its directory (v2: one directory for all)."""

    version: int
    dirs: dict[str, Path]
    _oom_kills: int = 0   # the count last read, for after the cgroup is removed

    def _procs_files(self) -> list[bytes]:
        return [bytes(d / "cgroup.procs") for d in dict.fromkeys(self.dirs.values())]

    def enter(self) -> None:
        """Move the calling process into this cgroup (in the child, between fork and exec)."""
        pid = str(os.getpid()).encode()
        for procs in self._procs_files():
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def members(self) -> list[int]:
        """The processes in it now."""
        return sorted({pid for d in dict.fromkeys(self.dirs.values()) for pid in _members(d)})

    def kill(self, seconds: float = 10.0) -> None:
        """SIGKILL every process in the cgroup and wait until it is empty."""
        deadline = time.monotonic() + seconds
        if self.version == 2 and (self.dirs["memory"] / "cgroup.kill").exists():
            _write(self.dirs["memory"] / "cgroup.kill", "1")
        while self.members():
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes {self.members()} of {self.dirs['memory']} outlived SIGKILL")
            self._kill_members()
            time.sleep(0.01)

    def _kill_members(self) -> None:
        """Without cgroup.kill: freeze (v1 freezer, v2 cgroup.freeze) so nothing starts while the members are
        listed, SIGKILL each, thaw so they can die."""
        freeze = (self.dirs["freezer"] / "freezer.state", "FROZEN", "THAWED") if self.version == 1 else \
            (self.dirs["memory"] / "cgroup.freeze", "1", "0")
        _write(freeze[0], freeze[1])
        try:
            if self.version == 1:
                until = time.monotonic() + 1.0
                while _read(freeze[0]).strip() == "FREEZING" and time.monotonic() < until:
                    time.sleep(0.005)
            for pid in self.members():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            _write(freeze[0], freeze[2])

    def remove(self) -> None:
        for d in dict.fromkeys(self.dirs.values()):
            _rmdir(d)

    def peak_memory(self) -> int | None:
        """The most memory it held at once, in bytes (tmpfs, shared memory and page cache included), when the
        kernel says (v2 memory.peak since Linux 5.19; v1 memory.max_usage_in_bytes)."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int(_read(self.dirs["memory"] / name))
        except (FileNotFoundError, ValueError):
            return None

    def oom_kills(self) -> int:
        """How many processes of it the kernel killed for going over its memory limit so far (the last count
        read once it is removed). Kernels before 4.13 (v1) count only that the limit was reached."""
        memory = self.dirs["memory"]
        try:
            if self.version == 2:
                count = _keyed(memory / "memory.events").get("oom_kill")
            else:
                count = _keyed(memory / "memory.oom_control").get("oom_kill")
                if count is None:
                    count = int(_read(memory / "memory.failcnt"))
        except (FileNotFoundError, ValueError):
            count = None
        if count is not None:
            self._oom_kills = count
        return self._oom_kills

    def over_memory(self) -> bool:
        """Whether the kernel killed a process of it for going over its memory limit."""
        return self.oom_kills() > 0


@dataclass(frozen=True)
class Hierarchy:
    """Where this process makes sandboxes' cgroups: `bases` maps a controller to its parent directory."""

    version: int
    bases: dict[str, Path]

    def describe(self) -> str:
        return f"cgroup v{self.version} under {self.bases['memory']}"

    def remove_stale(self) -> list[Path]:
        """Kill and remove the sandboxes' cgroups of grading processes that died without removing them (a worker
        killed with kill -9): whatever is still in them was left behind. Returns the ones removed."""
        removed = []
        for d in sorted(self.bases["memory"].glob("sandbox-*-*")):
            try:
                owner = int(d.name.split("-")[1])
                os.kill(owner, 0)
                continue                            # its grading process is alive: its own to remove
            except ValueError:
                continue                            # not a name this module makes
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            group = Cgroup(self.version, {c: base / d.name for c, base in self.bases.items()})
            try:
                group.kill()
                group.remove()
                removed.append(d)
            except (OSError, RuntimeError):
                pass                                # another grader removed it first, or it will next time
        return removed

    def create(self, memory: int, pids: int) -> Cgroup:
        """A new, empty cgroup allowed `memory` bytes (swap included, where the kernel counts it) and `pids`
        processes and threads."""
        name = f"sandbox-{os.getpid()}-{next(_serial)}"
        dirs = {c: base / name for c, base in self.bases.items()}
        for d in dict.fromkeys(dirs.values()):
            d.mkdir()
        group = Cgroup(self.version, dirs)
        try:
            if self.version == 2:
                _write(dirs["memory"] / "memory.max", str(memory))
                # memory.oom.group stays 0: the kernel kills the run that went over, not the zygote with it
                if (dirs["memory"] / "memory.swap.max").exists():
                    _write(dirs["memory"] / "memory.swap.max", "0")
                _write(dirs["pids"] / "pids.max", str(pids))
            else:
                _write(dirs["memory"] / "memory.limit_in_bytes", str(memory))
                if (dirs["memory"] / "memory.memsw.limit_in_bytes").exists():
                    _write(dirs["memory"] / "memory.memsw.limit_in_bytes", str(memory))
                _write(dirs["pids"] / "pids.max", str(pids))
        except BaseException:
            group.remove()
            raise
        return group


def _own_paths() -> dict[str, str]:
    """/proc/self/cgroup as {controller: path}; the v2 path under the key ""."""
    paths = {}
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, file system type, options) of every cgroup file system."""
    found = []
    for line in _read(Path("/proc/self/mounts")).splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2"):
            found.append((fields[1].replace("\\040", " "), fields[2], set(fields[3].split(","))))
    return found


def _v2() -> Hierarchy:
    mount = next((point for point, kind, _ in _mounts() if kind == "cgroup2"), None)
    own = _own_paths().get("")
    if mount is None or own is None:
        raise CgroupUnavailable("no cgroup v2 file system is mounted")
    here = Path(mount) / own.lstrip("/")
    if here.name == HOST_LEAF:          # a process this module moved (or started there): sandboxes go beside it
        here = here.parent
    offered = set(_read(here / "cgroup.controllers").split())
    missing = {"memory", "pids"} - offered
    if missing:
        raise CgroupUnavailable(f"cgroup v2 at {here} does not offer the {' and '.join(sorted(missing))} "
                                f"controller{'s' * (len(missing) > 1)} (offered: {' '.join(sorted(offered)) or 'none'})")
    if not os.access(here, os.W_OK) or not os.access(here / "cgroup.subtree_control", os.W_OK):
        raise CgroupUnavailable(f"cgroup v2 at {here} is not writable by this user (not delegated)")
    enabled = set(_read(here / "cgroup.subtree_control").split())
    if not {"memory", "pids"} <= enabled:
        if _members(here):   # the no-internal-processes rule: the grader's processes move to a leaf first
            leaf = here / HOST_LEAF
            leaf.mkdir(exist_ok=True)
            for pid in _members(here):
                try:
                    _write(leaf / "cgroup.procs", str(pid))
                except OSError as err:
                    if err.errno != errno.ESRCH:
                        raise CgroupUnavailable(f"cannot move process {pid} out of {here}: {err}") from err
        try:
            _write(here / "cgroup.subtree_control", "+memory +pids")
        except OSError as err:
            raise CgroupUnavailable(f"cannot enable memory and pids for the cgroups under {here}: {err}") from err
    return Hierarchy(2, {"memory": here, "pids": here})


def _v1() -> Hierarchy:
    own = _own_paths()
    bases = {}
    for controller in ("memory", "pids", "freezer"):
        point = next((p for p, kind, options in _mounts() if kind == "cgroup" and controller in options), None)
        if point is None or controller not in own:
            raise CgroupUnavailable(f"no cgroup v1 {controller} hierarchy is mounted")
        base = Path(point) / own[controller].lstrip("/")
        if not os.access(base, os.W_OK):
            raise CgroupUnavailable(f"cgroup v1 {controller} hierarchy at {base} is not writable by this user")
        bases[controller] = base
    return Hierarchy(1, bases)


@lru_cache(maxsize=1)
def hierarchy() -> Hierarchy:
    """This process's place for sandboxes' cgroups: v2 where memory and pids are delegated, else v1 (this
    machine's kind: v1 controllers and a v2 mount without them), else CgroupUnavailable with both reasons."""
    reasons = []
    for find in (_v2, _v1):
        try:
            found = find()
            found.remove_stale()
            return found
        except CgroupUnavailable as err:
            reasons.append(str(err))
        except OSError as err:
            reasons.append(f"{find.__name__[1:]}: {err}")
    raise CgroupUnavailable("; ".join(reasons))


LOST = ("without a cgroup of its own, a sandbox's memory in tmpfs and shared memory is bounded only by the "
        "sizes of its tmpfs folders (not by --memory), and a process that escapes the sandbox's kill is not "
        "guaranteed to die")
HOW_TO_DELEGATE = (
    "To get cgroups: run the grader in a cgroup delegated to you (v2: `systemd-run --user --scope -p "
    "Delegate=yes python -m grader grade ...`, or `Delegate=yes` in a systemd unit; in a container, a cgroup "
    "namespace with a writable /sys/fs/cgroup; in a Slurm job, its job cgroup), or as root on cgroup v1.")

"""The seccomp filter the sandbox runs under (passed to bwrap as a BPF program on a file descriptor)."""

from __future__ import annotations

import os
import struct

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


def seccomp_program(machine: str | None = None, new_processes: bool = False) -> bytes | None:
    """The BPF program for this machine's architecture, or None for one this module does not know.

    new_processes=True leaves fork and clone allowed: for the zygote (grader.sandbox.zygote), which runs no
    student code and forks the children that load the program without it."""
    arch = _ARCHES.get(machine or os.uname().machine)
    if arch is None:
        return None
    audit_arch, clone, clone3, forks = arch
    deny, nosys, allow = _ERRNO | _EPERM, _ERRNO | _ENOSYS, _ALLOW
    body = [_insn(_LD_W_ABS, 0)]                                   # A = nr
    body.append(_insn(_JGE, 0x40000000, jt=0, jf=1))             # x32 ABI
    body.append(_insn(_RET, deny))
    if new_processes:
        body.append(_insn(_RET, allow))
        return b"".join(_head(audit_arch, deny) + body)
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
    return b"".join(_head(audit_arch, deny) + body)


def _head(audit_arch: int, deny: int) -> list[bytes]:
    """Any other architecture's system calls fail."""
    return [_insn(_LD_W_ABS, 4), _insn(_JEQ, audit_arch, jt=1, jf=0), _insn(_RET, deny)]

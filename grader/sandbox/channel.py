"""The report channel between the harness (inside the sandbox) and the grader (outside): framed messages.

A frame is one byte of kind, four bytes of length (big-endian) and the payload. The harness writes with
`Channel`; the grader reads with `Reader`, which enforces a deadline per read and the size limit before
anything is buffered. Student code shares the harness's process, so every frame may be forged: the grader
parses payloads as hostile data (grader.sandbox.wire).
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">cI")


class Channel:
    """The framed report stream to the grader (file descriptor 3)."""

    def __init__(self, fd: int = 3) -> None:
        self.fd = fd

    def send(self, kind: bytes, payload: bytes) -> None:
        data = memoryview(_HEADER.pack(kind, len(payload)) + payload)
        while data:
            data = data[os.write(self.fd, data):]

    def event(self, kind: bytes, **fields: Any) -> None:
        self.send(kind, json.dumps(fields).encode())


class Reader:
    """Frames from the harness's channel, with a deadline per read."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer = fd, bytearray()

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self.buffer) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(self.fd, max(65536, min(n - len(self.buffer), 1 << 22)))
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def frame(self, deadline: float) -> tuple[bytes, bytes] | None:
        """(kind, payload), or None at end of stream; TimeoutError at the deadline; ValueError if too large."""
        if not self._fill(_HEADER.size, deadline):
            return None
        kind, length = _HEADER.unpack(bytes(self.buffer[:_HEADER.size]))
        if length > MAX_FRAME:
            raise ValueError(f"an output of {length / 2**20:.0f} MiB, more than the {MAX_FRAME // 2**20} MiB allowed")
        if not self._fill(_HEADER.size + length, deadline):
            return None
        payload = bytes(self.buffer[_HEADER.size:_HEADER.size + length])
        del self.buffer[:_HEADER.size + length]
        return kind, payload

"""Length-prefixed pickle frames between the daemon and a token worker.

Each frame holds a list of tuples, so many operations cross the socket in one write:
request  (request_id, session_slot, op_name, label, args, deadline_monotonic_or_0)
reply    (request_id, error_code_or_None, payload)
The peer is our own child process on a private socketpair, never the network.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024


def encode(obj: Any) -> bytes:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: feed bytes, get whole frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes exceeds the limit")
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            frames.append(pickle.loads(self._buf[HEADER.size:end]))
            del self._buf[:end]
        return frames

"""Length-prefixed frames between the daemon and a token worker.

Each frame holds a list of tuples, so many operations cross the socket in one write:
request  (request_id, session_slot, op_name, label, args, deadline_monotonic_or_0)
reply    (request_id, error_code_or_None, payload)
The peer is our own child process on a private socketpair, never the network.

Bodies are marshal (plain tuples, bytes, str, numbers, dicts, sets: a third cheaper than pickle
for these frames); anything marshal refuses (an enum, a dataclass in a payment op's params) goes
as pickle, flagged in the header's top bit.
"""

from __future__ import annotations

import marshal
import pickle
import struct
from typing import Any

HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024
PICKLED = 0x8000_0000  # header flag: the body is pickle, not marshal
_SIZE = PICKLED - 1


def encode(obj: Any) -> bytes:
    try:
        body = marshal.dumps(obj)
        flag = 0
    except ValueError:
        body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        flag = PICKLED
    return HEADER.pack(len(body) | flag) + body


class FrameDecoder:
    """Incremental decoder: feed bytes, get whole frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data  # the usual case, whole frames in one read: no copy into the buffer
        frames = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER.size:
            (word,) = HEADER.unpack_from(buf, pos)
            size = word & _SIZE
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes exceeds the limit")
            stop = pos + HEADER.size + size
            if stop > end:
                break
            with memoryview(buf) as view, view[pos + HEADER.size:stop] as body:
                frames.append(pickle.loads(body) if word & PICKLED else marshal.loads(body))
            pos = stop
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < end:
            self._buf += buf[pos:]
        return frames

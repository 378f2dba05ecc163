"""A child process of the daemon on a private socketpair, speaking wire.py frames.

The token workers (pkcs11.py) and the shadow executor (shadow/executor.py) start, link and stop their
children the same way: `spawn` starts `python -m MODULE FD` and connects a FrameLink to our end;
`kill` closes that end and kills the child, so a start that fails halfway leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Callable
from typing import Any

from hsmlb.backends import wire


class FrameLink(asyncio.Protocol):
    """Frames in, each to `on_frame`; `on_data` first on every read (a sign of life); `on_lost(link)` when the
    child's end closes (the owner checks it is still its current link: a respawn replaces it)."""

    def __init__(self, on_frame: Callable[[Any], None], on_lost: Callable[[FrameLink], None],
                 on_data: Callable[[], None] | None = None) -> None:
        self.on_frame = on_frame
        self.on_lost = on_lost
        self.on_data = on_data
        self.decoder = wire.FrameDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.on_data is not None:
            self.on_data()
        on_frame = self.on_frame
        for frame in self.decoder.feed(data):
            on_frame(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost(self)


async def spawn(module: str, env: dict[str, str], link: Callable[[], FrameLink]
                ) -> tuple[asyncio.subprocess.Process, FrameLink]:
    """Start `python -m module FD` with the child's end of a socketpair as FD, and connect `link()` to ours."""
    parent, child = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", module, str(child.fileno()),
                                                    pass_fds=(child.fileno(),), env=env)
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    try:
        _, protocol = await asyncio.get_running_loop().create_connection(link, sock=parent)
    except BaseException:
        parent.close()
        await kill(proc, None)
        raise
    return proc, protocol


async def kill(proc: asyncio.subprocess.Process, link: FrameLink | None) -> None:
    """Close our end (the child's EOF) and kill the child, waiting for it to be gone."""
    if link is not None and link.transport is not None:
        link.transport.close()
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()

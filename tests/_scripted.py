"""A scripted stand-in node for pure routing tests (no tokens, no sockets): it holds the given keys,
advertises the given capabilities and answers every op with `outcome`, after `gate` if one is set."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from hsmlb.backends.base import NodeStats
from hsmlb.ops import NATIVE_CAPABILITIES, Capability, KeyInfo, Operation


class ScriptedBackend:
    def __init__(self, name: str, keys: Iterable[KeyInfo], outcome: Any = b"ok",
                 capabilities: frozenset[Capability] = NATIVE_CAPABILITIES) -> None:
        self.name, self.kind, self.state = name, "scripted", "up"
        self.capabilities = capabilities
        self.on_change: list[Any] = []
        self.keys = {k.alias: k for k in keys}
        self.stats = NodeStats()
        self.outcome = outcome  # a value, or an exception to raise
        self.gate: asyncio.Event | None = None  # set: each op waits (bounded) for it first
        self.calls = 0

    async def perform(self, op: Operation, slot: int) -> Any:
        self.calls += 1
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), 5)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    async def probe(self) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def inject_fault(self, fault: str, value: float = 0.0) -> None: ...

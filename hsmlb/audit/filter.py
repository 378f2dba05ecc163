"""The audit filter: one record per operation (each batched one separately), per Admin action and per
denial, queued for the writer thread; and, in fail_closed mode, the refusal to serve unaudited.

Records are built only from named fields (caller, peer, operation, key alias, key label or ARN, KCV,
node, outcome, latency, request id, trace id): the request's data never reaches the queue.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc

from hsmlb.api.filters import Call, FilterBase, Item
from hsmlb.audit.config import AuditConfig
from hsmlb.audit.writer import AuditWriter
from hsmlb.errors import Unavailable

ADMIN_SERVICE = "/hsmlb.v1.Admin/"
_READS = ("List", "Get")  # Admin reads stay open while auditing fails, so operators can see why
_OK = grpc.StatusCode.OK
_WITH_DETAIL = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED})


class AuditFilter(FilterBase):
    def __init__(self, writer: AuditWriter, fail_closed: bool = True) -> None:
        self.writer = writer
        self.fail_closed = fail_closed
        self._submit = writer.queue.append
        self._submit_many = writer.queue.extend

    def _refuse(self) -> None:
        w = self.writer
        raise Unavailable(f"the audit log cannot be written ({w.last_error}); cryptographic and admin operations "
                          "are refused until it can (audit.on_failure: fail_closed)")

    def open(self, call: Call) -> None:
        if self.fail_closed and not self.writer.healthy and call.method.startswith(ADMIN_SERVICE) \
                and not call.method[len(ADMIN_SERVICE):].startswith(_READS):
            self._refuse()

    def admit(self, call: Call, item: Item) -> None:
        if self.fail_closed and not self.writer.healthy:
            self._refuse()

    def done(self, call: Call, items: Sequence[Item]) -> None:
        # The hot path's whole share of auditing: one tuple of plain values per operation, and one
        # hand-off of the batch onto the writer's deque. `code._name_` and `is` rather than `code.name`
        # and hashing: an Enum's property and __hash__ are Python-level calls, a measurable part of it.
        wall = time.time() - time.monotonic()  # + item.ended: when each one ended, not when the batch was told
        identity, peer, method = call.identity, call.peer, call.method
        entries = []
        try:
            for item in items:
                op, key, code = item.op, item.key, item.code
                ended = item.ended or time.monotonic()
                entries.append(("op", wall + ended, identity, peer, method, item.field,
                                op.key_alias if op is not None else "", op.other_keys if op is not None else (),
                                key.label if key is not None else "", key.kcv if key is not None else "",
                                op.node if op is not None else "", op.attempts if op is not None else 0,
                                code._name_, item.message if code is not _OK and code in _WITH_DETAIL else "",
                                ended - item.started, item.request_id, item.traceparent))
        finally:  # a bug on one item must not lose the records built before it
            self._submit_many(entries)

    def admin(self, call: Call, action: str, target: str, code: grpc.StatusCode, detail: str) -> None:
        self._submit(("admin", time.time(), call.identity, call.peer, call.method, action, target, code.name,
                      detail, call.traceparent))

    def close(self) -> None:
        self.writer.event("daemon_stop")
        self.writer.close()


def start_audit(config: AuditConfig, detail: str = "") -> AuditFilter:
    """Load the signing key, resume the chain, start the writer, and record the daemon's start."""
    from hsmlb.audit.chain import load_private_key
    from hsmlb.config import ConfigError

    try:
        key = load_private_key(config.read_signing_key())
    except ValueError as exc:  # the class and our own message only: never the key's bytes
        raise ConfigError(f"audit signing key: {exc if 'Ed25519' in str(exc) else type(exc).__name__}") from None
    writer = AuditWriter(config, key)
    writer.start()
    writer.event("daemon_start", detail)
    return AuditFilter(writer, fail_closed=config.on_failure == "fail_closed")

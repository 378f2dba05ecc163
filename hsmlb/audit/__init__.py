"""The tamper-evident audit log: hash-chained JSONL, signed checkpoints, a writer off the event loop.

hsmlb.audit.filter (the seam's filter), .writer, .verify and .cli are imported from their modules:
importing the config model must not pull in grpc."""

from hsmlb.audit.config import AuditConfig

__all__ = ["AuditConfig"]

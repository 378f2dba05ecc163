"""`--log-format json`: one JSON object per line, with the trace id where an operation is traced.

The message is the one the text format prints, already redacted where it is built (errors.redact);
this only changes its framing. The trace id comes from a context variable the tracing filter sets
for a sampled unary call (which runs in its own task), so the router's lines about that call
carry it; stream operations share their RPC's task and are not tagged one by one.

The daemon's children (token workers, the shadow executor) write to the same stderr. They inherit the
format and level through the environment (`share_with_children`) and tag their lines with the process
(`child_logging`), so a JSON log stays one JSON object per line whoever wrote it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextvars import ContextVar

current_trace_id: ContextVar[str] = ContextVar("hsmlb_trace_id", default="")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
FORMAT_ENV, LEVEL_ENV = "HSMLB_LOG_FORMAT", "HSMLB_LOG_LEVEL"


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process = process  # a child's role ("token-worker"); the daemon's own lines have none

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        if self.process:
            entry["process"] = self.process
            entry["pid"] = record.process
        trace_id = getattr(record, "trace_id", "") or current_trace_id.get()
        if trace_id:
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def use_json_logs() -> None:
    """Switch every handler of the root logger to the JSON format."""
    formatter = JsonFormatter()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


def share_with_children(log_format: str) -> None:
    """The daemon's format and level, for the children it spawns (they copy os.environ)."""
    os.environ[FORMAT_ENV] = log_format
    os.environ[LEVEL_ENV] = logging.getLevelName(logging.getLogger().getEffectiveLevel())


def child_logging(process: str) -> None:
    """A child's logging: stderr in the daemon's format (WARNING and up unless the daemon says otherwise),
    each line naming `process`; without it, Python's last-resort handler would print bare messages."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get(FORMAT_ENV) == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT.replace("%(message)s",
                                                                   f"[{process} %(process)d] %(message)s")))
    root = logging.getLogger()
    root.addHandler(handler)
    level = os.environ.get(LEVEL_ENV, "WARNING")
    root.setLevel(level if isinstance(logging.getLevelName(level), int) else "WARNING")

"""`--log-format json`: one JSON object per line, with the trace id where an operation is traced.

The message is the one the text format prints, already redacted where it is built (errors.redact);
this only changes its framing. The trace id comes from a context variable the tracing filter sets
for a sampled unary call (which runs in its own task), so the router's lines about that call
carry it; stream operations share their RPC's task and are not tagged one by one.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar

current_trace_id: ContextVar[str] = ContextVar("hsmlb_trace_id", default="")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
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

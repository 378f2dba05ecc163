"""Daemons with telemetry on, for the metrics, tracing and status-page tests."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Cluster, DaemonProcess, start_daemon

URL_LINE = re.compile(r"metrics and status page on (http://\S+)")


def metrics_url(daemon: DaemonProcess, timeout_s: float = 10.0) -> str:
    """The status listener's URL, as the daemon logged it (its port is chosen at start)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = URL_LINE.search(daemon.log_text())
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise AssertionError("the daemon never logged its metrics URL:\n" + daemon.log_text()[-2000:])


@contextmanager
def telemetry_daemon(cluster: Cluster, directory: Path, metrics: bool = True, mutate: Any = None,
                     **top: Any) -> Iterator[tuple[DaemonProcess, str]]:
    """A daemon of the test's own on the dev cluster, with `metrics: {listen: 127.0.0.1:0}` (or none)."""
    if metrics:
        top.setdefault("metrics", {"listen": "127.0.0.1:0"})
    config = cluster.write_variant(directory / "hsmlb-telemetry.yaml", mutate=mutate, **top)
    daemon = start_daemon(config, directory / "daemon.log")
    try:
        yield daemon, metrics_url(daemon) if metrics else ""
    finally:
        daemon.stop()


def fetch(url: str, timeout_s: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        assert response.status == 200
        return response.read().decode()


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """`/metrics` parsed by prometheus_client's own parser: sample name -> [(labels, value)]."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(fetch(url + "metrics")):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    return sum(v for have, v in samples.get(name, []) if all(have.get(k) == x for k, x in labels.items()))


class Collector:
    """An OTLP/HTTP endpoint on loopback that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                outer.add(request, self.path)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest, path: str) -> None:
        assert path == "/v1/traces"
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    attrs = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in s.attributes}
                    span = {"name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(), "kind": s.kind, "attrs": attrs, "service": service,
                            "status": (s.status.code, s.status.message),
                            "text": " ".join([s.name, s.status.message, *(str(v) for v in attrs.values()),
                                              *(e.name for e in s.events)])}
                    with self.lock:
                        self.spans.append(span)

    def wait(self, predicate: Any, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                found = [s for s in self.spans if predicate(s)]
            if found:
                return found
            time.sleep(0.05)
        return []

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""Daemons with telemetry on, for the metrics, tracing and status-page tests."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
def telemetry_daemon(cluster: Cluster, directory: Path, metrics: bool = True,
                     **top: Any) -> Iterator[tuple[DaemonProcess, str]]:
    """A daemon of the test's own on the dev cluster, with `metrics: {listen: 127.0.0.1:0}` (or none)."""
    if metrics:
        top.setdefault("metrics", {"listen": "127.0.0.1:0"})
    config = cluster.write_variant(directory / "hsmlb-telemetry.yaml", **top)
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

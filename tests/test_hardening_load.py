"""Issue 10, load and faults against a real daemon on loopback: a stopped token worker under steady
load (acceptance 3), a burst of unary calls that overloads the nodes (acceptance 2, statuses only:
the timings are bench/overload.py's), and cancelled calls and Stream messages that must leave no
ERROR or WARNING in the log (acceptance 6).

HSMLB_STOP_S sets how long the worker stays stopped (default 3 s; acceptance 3 says 10)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bench.overload import fire
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._daemon_helpers import NIST_ECB, NODES, inject, nist_request, still_serves, wait_for
from tests.conftest import Cluster, DaemonProcess, node_table, start_daemon

STOP_S = float(os.environ.get("HSMLB_STOP_S", "3"))


def _worker_pid(daemon: DaemonProcess, node: str) -> int:
    found = re.findall(rf"node {node} up: worker pid (\d+)", daemon.log_text())
    assert found, daemon.log_text()[-2000:]
    return int(found[-1])


class _SteadyLoad:
    """Unary EncryptData at a steady rate from a thread, each with a 2 s deadline; every outcome counted."""

    def __init__(self, address: str, rate_per_s: float = 150.0) -> None:
        self.codes: Counter[str] = Counter()
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.OperationsStub(self._channel)
        self._interval = 1 / rate_per_s
        self._stop = threading.Event()
        self._futures: list[grpc.Future] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _SteadyLoad:
        self._thread.start()
        return self

    def _run(self) -> None:
        request = nist_request()
        while not self._stop.wait(self._interval):
            self._futures.append(self._stub.EncryptData.future(request, timeout=2.0))

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for future in self._futures:
            try:
                self.codes["OK" if future.result().cipher_text == NIST_ECB else "WRONG"] += 1
            except grpc.RpcError as exc:
                self.codes[exc.code().name] += 1
        self._channel.close()


def _routable(daemon: DaemonProcess, node: str) -> bool:
    status = node_table(daemon)[node]
    return status.backend_state == "up" and status.state.startswith("healthy")


def test_a_stopped_worker_is_out_within_a_second_and_nothing_fails(fresh_daemon: DaemonProcess) -> None:
    """Acceptance 3: SIGSTOP of node-a's worker under steady load with 2 s deadlines, a busy process
    competing for the cores: no request fails, node-a is out of rotation within 1 s, and back (through
    slow start) after SIGCONT."""
    pid = _worker_pid(fresh_daemon, "node-a")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with _SteadyLoad(fresh_daemon.address) as load:
            time.sleep(1.0)
            os.kill(pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            try:
                assert wait_for(lambda: not _routable(fresh_daemon, "node-a"), 5, step=0.02)
                out_after = time.monotonic() - stopped_at
                time.sleep(max(0.0, STOP_S - (time.monotonic() - stopped_at)))
            finally:
                os.kill(pid, signal.SIGCONT)
            states = []
            assert wait_for(lambda: states.append(node_table(fresh_daemon)["node-a"].state) or
                            _routable(fresh_daemon, "node-a"), 15, step=0.05)
            time.sleep(0.5)
    finally:
        hog.kill()
        hog.wait(5)
    print(f"\nstopped {STOP_S:g}s: out of rotation after {out_after:.2f}s; outcomes {dict(load.codes)}")
    assert out_after < 1.0, out_after
    assert set(load.codes) == {"OK"} and load.codes["OK"] > 100 * STOP_S, load.codes
    assert "healthy (slow start)" in [*states, node_table(fresh_daemon)["node-a"].state], states[-5:]
    assert "token worker is stopped" in fresh_daemon.log_text()


def test_overloaded_nodes_shed_with_resource_exhausted_only(cluster: Cluster, tmp_path: Path) -> None:
    """Acceptance 2, statuses: a burst of 1,500 unary calls (5 s deadlines) on nodes slowed to 20 ms an
    operation (~200 ops/s for the cluster): every call is OK or RESOURCE_EXHAUSTED, both occur, and
    the daemon serves afterwards."""
    daemon = start_daemon(cluster.config, tmp_path / "daemon.log")
    try:
        with daemon.channel() as channel:
            inject(channel, NODES, "delay", 0.02)
        outcome = fire(daemon.address, 1500, 5.0)
        with daemon.channel() as channel:
            inject(channel, NODES, "delay", 0.0)
            still_serves(channel)
        print(f"\nburst of 1500 on slowed nodes: {dict(outcome.codes)}; RESOURCE_EXHAUSTED median "
              f"{outcome.quantile_ms('RESOURCE_EXHAUSTED', 0.5)} ms, OK p99 {outcome.quantile_ms('OK', 0.99)} ms")
        assert set(outcome.codes) == {"OK", "RESOURCE_EXHAUSTED"}, outcome.codes
        assert "Traceback" not in daemon.log_text()
    finally:
        daemon.stop()


def test_an_attempt_on_a_slowed_node_moves_to_another_node_before_the_deadline(cluster: Cluster,
                                                                              tmp_path: Path) -> None:
    """Item 2, per-attempt timeout: node-a answers every op 2 s late (a slowed token worker); unary
    calls with 1.5 s deadlines and Stream messages with timeout_ms 1500 all still succeed, because an
    attempt on node-a is given up after the per-attempt limit (the 500 ms floor here: node-a's usual
    latency is ~1 ms) and retried on another node; node-a is charged with those retries. Without the
    timeout its calls end DEADLINE_EXCEEDED."""
    daemon = start_daemon(cluster.config, tmp_path / "daemon.log")
    try:
        with daemon.channel() as channel:
            ops = pb_grpc.OperationsStub(channel)
            for _ in range(40):  # every node has answered: its latency is known
                assert ops.EncryptData(nist_request(), timeout=5).cipher_text == NIST_ECB
            inject(channel, ["node-a"], "delay", 2.0)
            futures = [ops.EncryptData.future(nist_request(), timeout=1.5) for _ in range(24)]
            stream = ops.Stream(iter([pb.StreamRequest(request_id=i + 1, timeout_ms=1500, encrypt_data=nist_request())
                                      for i in range(24)]), timeout=10)
            codes: Counter[str] = Counter()
            for future in futures:
                try:
                    codes["OK" if future.result().cipher_text == NIST_ECB else "WRONG"] += 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] += 1
            items = Counter("OK" if r.encrypt_data.cipher_text == NIST_ECB else f"status {r.status.code}"
                            for r in stream)
        moved = node_table(daemon)["node-a"].retries_from
        print(f"\nnode-a 2 s late: unary {dict(codes)}, Stream {dict(items)}; attempts moved off node-a: {moved}")
        assert codes == {"OK": 24}, codes
        assert items == {"OK": 24}, items
        assert moved >= 1, "no attempt reached node-a: the test proved nothing"
    finally:
        daemon.stop()


def _problems(log: str) -> list[str]:
    """ERROR/WARNING lines and tracebacks, but the test's own fault-injection notices."""
    return [line for line in log.splitlines() if (re.search(r" (ERROR|WARNING|CRITICAL) ", line)
            and "fault injection:" not in line) or "Traceback" in line or "never retrieved" in line]


@contextlib.contextmanager
def _slowed_daemon(cluster: Cluster, tmp_path: Path, delay_s: float, settle_s: float
                   ) -> Iterator[tuple[grpc.Channel, list[str]]]:
    """A daemon on nodes slowed by `delay_s`, without span export (with no OTLP collector on this host, the
    exporter's one warning that it cannot export says nothing about these tests). Yields the channel and a
    list that, once the block is done, the slowdown off, `settle_s` waited and the daemon shown still
    serving, holds the ERROR/WARNING lines logged since the slowdown began."""
    config = cluster.write_variant(tmp_path / "no-export.yaml", tracing={"exporter": "none"})
    daemon = start_daemon(config, tmp_path / "daemon.log")
    added: list[str] = []
    try:
        with daemon.channel() as channel:
            inject(channel, NODES, "delay", delay_s)
            before = len(_problems(daemon.log_text()))
            yield channel, added
            inject(channel, NODES, "delay", 0.0)
            time.sleep(settle_s)  # late answers of the expired ops (and their retries) settle
            still_serves(channel)
        added.extend(_problems(daemon.log_text())[before:])
    finally:
        daemon.stop()


@pytest.mark.parametrize("total", [1000])
def test_cancelled_calls_and_timed_out_stream_messages_log_nothing(cluster: Cluster, tmp_path: Path,
                                                                    total: int) -> None:
    """Acceptance 6: 1,000 Stream messages whose timeout_ms passes while their op runs, and unary calls
    the client cancels or lets time out, add no ERROR or WARNING line to the daemon's log."""
    with _slowed_daemon(cluster, tmp_path, 0.005, settle_s=1.0) as (channel, added):
        ops = pb_grpc.OperationsStub(channel)
        requests = [pb.StreamRequest(request_id=i + 1, timeout_ms=1, encrypt_data=nist_request())
                    for i in range(total)]
        replies = list(ops.Stream(iter(requests), timeout=60))
        timed_out = sum(r.WhichOneof("result") == "status" and r.status.code == 4 for r in replies)
        unary = [ops.EncryptData.future(nist_request(), timeout=0.002) for _ in range(total // 4)]
        cancelled = [ops.EncryptData.future(nist_request(), timeout=10) for _ in range(total // 4)]
        for future in cancelled:
            future.cancel()
        for future in unary + cancelled:
            try:
                future.result()
            except grpc.FutureCancelledError:
                pass
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
    assert len(replies) == total
    assert timed_out > total // 2, f"only {timed_out} of {total} timed out: the test proved little"
    assert not added, "\n".join(added[:10])


def test_unary_answers_ready_as_their_deadline_passes_log_nothing(cluster: Cluster, tmp_path: Path) -> None:
    """Acceptance 6, the unary race: 2,000 calls with deadlines of 2-13 ms on nodes slowed to 3 ms, so many
    answers and DEADLINE_EXCEEDED refusals are ready in the instant grpc core cancels the call on its own
    deadline timer. Sending them then made grpc.aio log `ExecuteBatchError raised in core` at ERROR for
    ~1 call in 250 of this loop (46 in 12,000 before api/status.drop_if_late); now nothing is logged."""
    with _slowed_daemon(cluster, tmp_path, 0.003, settle_s=0.5) as (channel, added):
        ops = pb_grpc.OperationsStub(channel)
        codes: Counter[str] = Counter()
        for _ in range(100):
            futures = [ops.EncryptData.future(nist_request(), timeout=(2 + i % 12) / 1000) for i in range(20)]
            for future in futures:
                try:
                    codes["OK" if future.result().cipher_text == NIST_ECB else "WRONG"] += 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] += 1
    assert set(codes) == {"OK", "DEADLINE_EXCEEDED"}, f"both outcomes are needed for the race: {codes}"
    assert not added, "\n".join(added[:10])

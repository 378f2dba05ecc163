"""Pools and priority through a real daemon: tokens (pool hsm) primary, emulated regions (pool apc)
failover, as `hsmlb dev up --serve` writes it. Encrypt traffic stays on the tokens while they are
healthy and moves to the regions when every token holder is failed by a drill."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hsmlb.dev.cluster import dev_routes
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._daemon_helpers import NIST_ECB, NODES, nist_request, set_state
from tests.conftest import DaemonProcess, PaymentCluster, node_table, start_daemon

REGIONS = ("apc-east", "apc-west")


def routed_config(cluster: PaymentCluster, name: str, shadow: bool = False, **shadow_settings: object) -> Path:
    def mutate(data: dict) -> None:
        data["routes"] = dev_routes(shadow)
        if shadow_settings:
            data["shadow"] = dict(shadow_settings)
    return cluster.write_variant(cluster.state_dir / f"hsmlb-{name}.yaml", mutate=mutate)


@pytest.fixture
def routed_daemon(strict_payment_cluster: PaymentCluster, tmp_path: Path) -> Iterator[DaemonProcess]:
    daemon = start_daemon(routed_config(strict_payment_cluster, f"routed-{tmp_path.name}"), tmp_path / "d.log")
    yield daemon
    daemon.stop()


def _ok(daemon: DaemonProcess) -> dict[str, int]:
    return {name: n.ops_ok for name, n in node_table(daemon).items()}


def test_dev_routes_are_written_with_regions_only(strict_payment_cluster: PaymentCluster):
    data = yaml.safe_load(routed_config(strict_payment_cluster, "dev-routes").read_text())
    assert data["routes"] == [{"op": "*", "primary": "hsm", "failover": ["apc"]}]


def test_encrypt_stays_on_tokens_until_every_token_is_failed(routed_daemon: DaemonProcess):
    with routed_daemon.channel() as channel:
        ops = pb_grpc.OperationsStub(channel)
        before = _ok(routed_daemon)
        for _ in range(200):
            assert ops.EncryptData(nist_request(), timeout=10).cipher_text == NIST_ECB
        healthy = _ok(routed_daemon)
        served = {n: healthy[n] - before[n] for n in healthy}
        assert sum(served[n] for n in NODES) >= 200
        assert all(served[r] <= 2 for r in REGIONS), served  # at most a health canary or two: no client traffic
        set_state(channel, NODES, pb.FAIL)
        try:
            for _ in range(100):
                assert ops.EncryptData(nist_request(), timeout=10).cipher_text == NIST_ECB
            failed = _ok(routed_daemon)
        finally:
            set_state(channel, NODES, pb.RESTORE)
    moved = {n: failed[n] - healthy[n] for n in failed}
    assert sum(moved[r] for r in REGIONS) >= 100, moved
    assert all(moved[n] == 0 for n in NODES), moved

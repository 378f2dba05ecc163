"""Per-peer connection cap (issue 10, item 3): connections one peer host may use for RPCs, counted by
peer port at the seam's open (hsmlb/peer_cap.py). Policy with a fake clock, then a real daemon on
loopback: one connection more than the cap gets RESOURCE_EXHAUSTED, the others keep being served, and
a connection that idled out frees its place."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from hsmlb.api.filters import Call
from hsmlb.clock import FakeClock
from hsmlb.peer_cap import PeerConnectionCap, TooManyConnections
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._daemon_helpers import NIST_ECB, nist_request
from tests.conftest import Cluster, start_daemon


def _call(peer: str) -> Call:
    return Call("/hsmlb.v1.Operations/EncryptData", peer)


def test_one_connection_more_than_the_cap_is_refused_and_an_idle_one_frees_its_place():
    clock = FakeClock()
    cap = PeerConnectionCap(per_peer=2, idle_s=10.0, clock=clock)
    cap.open(_call("ipv4:10.0.0.5:1001"))
    cap.open(_call("ipv4:10.0.0.5:1002"))
    cap.open(_call("ipv4:10.0.0.5:1001"))  # a known connection: never refused
    cap.open(_call("ipv4:10.0.0.6:1003"))  # another host has its own budget
    cap.open(_call("ipv6:[::1]:1004"))
    with pytest.raises(TooManyConnections) as refused:
        cap.open(_call("ipv4:10.0.0.5:1005"))
    assert refused.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED and "10.0.0.5" not in refused.value.public_message
    assert (cap.refused, cap.connections("ipv4:10.0.0.5")) == (1, 2)
    clock.advance(6)
    cap.open(_call("ipv4:10.0.0.5:1001"))  # still busy
    clock.advance(6)  # 1002 idle for 12 s: grpc has closed it
    cap.open(_call("ipv4:10.0.0.5:1005"))
    assert cap.connections("ipv4:10.0.0.5") == 2
    cap.open(_call("unix:/tmp/sock"))  # no host to count by


def test_hosts_whose_connections_idled_out_are_forgotten_beyond_the_bound():
    clock = FakeClock()
    cap = PeerConnectionCap(per_peer=1, idle_s=1.0, clock=clock, max_hosts=3)
    for i in range(3):
        cap.open(_call(f"ipv4:10.0.1.{i}:5000"))
    clock.advance(2)
    cap.open(_call("ipv4:10.0.2.1:5000"))
    assert len(cap._hosts) == 1


def _channel(address: str) -> grpc.Channel:
    # a channel of its own: its own connection (grpc shares subchannels between channels by default)
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def test_a_peer_over_its_connection_cap_gets_resource_exhausted_on_loopback(cluster: Cluster, tmp_path: Path):
    config = cluster.write_variant(tmp_path / "peer-cap.yaml", limits={"max_connections_per_peer": 3,
                                                                      "idle_timeout_s": 1.0})
    daemon = start_daemon(config, tmp_path / "daemon.log")
    time.sleep(1.2)  # the start-up checks' own connection idles out
    channels = [_channel(daemon.address) for _ in range(4)]
    try:
        stubs = [pb_grpc.OperationsStub(c) for c in channels]
        for stub in stubs[:3]:
            assert stub.EncryptData(nist_request(), timeout=5).cipher_text == NIST_ECB
        with pytest.raises(grpc.RpcError) as refused:
            stubs[3].EncryptData(nist_request(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
        assert "too many connections" in (refused.value.details() or "")
        for stub in stubs[:3]:  # the connections within the cap keep being served
            assert stub.EncryptData(nist_request(), timeout=5).cipher_text == NIST_ECB
        channels[0].close()
        time.sleep(1.5)  # past the idle time: the closed connection no longer counts
        assert stubs[3].EncryptData(nist_request(), timeout=5).cipher_text == NIST_ECB
        assert "Traceback" not in daemon.log_text()
    finally:
        for channel in channels:
            channel.close()
        daemon.stop()

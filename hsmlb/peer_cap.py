"""Per-peer connection cap (limits.max_connections_per_peer): the closest thing gRPC Python allows.

Why a filter: grpc core caps the total of connections (grpc.max_allowed_incoming_connections, from
limits.py) but has no per-peer bound, and gRPC Python sees no connection at all, only RPCs with their
peer address ("ipv4:10.0.0.5:53122": host and the connection's own port). So this counts, per peer
host, the connections (distinct peer ports) that started an RPC within the idle time, and refuses an
RPC on one more connection with RESOURCE_EXHAUSTED at the seam's `open`, before any decoding.

What it does not do: it never closes a connection or refuses a TCP/HTTP2 handshake (a refused
connection stays open until grpc's idle timeout closes it; idle connections are bounded by that timeout
and the total cap); a connection that only holds one long Stream counts until its RPC is older than the
idle time; clients behind one NAT address share one budget. The idle time is limits.idle_timeout_s,
after which grpc has closed a connection with no RPC anyway.
"""

from __future__ import annotations

from hsmlb.api.filters import Call, FilterBase
from hsmlb.clock import Clock, monotonic
from hsmlb.errors import Overloaded


class TooManyConnections(Overloaded):
    reason = "peer_connections"
    public = "too many connections from this client; reuse a channel and retry later"

    def __init__(self, limit: int) -> None:
        super().__init__(f"too many connections from this client (limit {limit}); reuse a channel and retry later")


class PeerConnectionCap(FilterBase):
    def __init__(self, per_peer: int, idle_s: float, clock: Clock = monotonic, max_hosts: int = 65536) -> None:
        self.per_peer = per_peer
        self.idle_s = idle_s
        self.clock = clock
        self.max_hosts = max_hosts  # beyond it, hosts whose connections all idled out are forgotten
        self.refused = 0
        self._hosts: dict[str, dict[str, float]] = {}  # peer host -> {peer (host:port) -> last RPC start}

    def open(self, call: Call) -> None:
        peer = call.peer
        host = peer.rpartition(":")[0]
        if not host or peer.startswith("unix"):
            return
        now = self.clock()
        connections = self._hosts.get(host)
        if connections is None:
            if len(self._hosts) >= self.max_hosts:
                self._forget_idle(now)
            self._hosts[host] = {peer: now}
            return
        if peer not in connections and len(connections) >= self.per_peer:
            horizon = now - self.idle_s  # grpc has closed these by now (max_connection_idle)
            for gone in [p for p, seen in connections.items() if seen < horizon]:
                del connections[gone]
            if len(connections) >= self.per_peer:
                self.refused += 1
                raise TooManyConnections(self.per_peer)
        connections[peer] = now

    def connections(self, host: str) -> int:
        return len(self._hosts.get(host, ()))

    def _forget_idle(self, now: float) -> None:
        horizon = now - self.idle_s
        for host in [h for h, conns in self._hosts.items() if max(conns.values()) < horizon]:
            del self._hosts[host]

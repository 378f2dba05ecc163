"""Load profiles: operation mix, users, rate, duration and the thresholds the verdict judges.

Why a typed table: one place says what each capacity claim means (which ops, how much load, for
how long, what must hold), and the runner, the locustfile and the stream client all read it.
Closed loop: latency = users / TPS, so 5,000 TPS at p99 ~10 ms needs about 20-24 users that
never wait; a profile that wants a rate paces its users instead (`rate_per_user`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Literal

SYM_P99_MS = 10.0
ASYM_P99_MS = 50.0
# SoftHSM2 RSA-2048 sign ~0.5 ms per op on one token worker (README, cost weights); alias/sign-rsa
# lives on the three primary nodes. The mixed profile offers ~80% of that capacity.
RSA_SIGN_S = 0.0005
RSA_HOLDERS = 3
# A token signs on one core at a time: the tokens' capacity is bounded by the holders and the cores.
RSA_CAPACITY = min(RSA_HOLDERS, os.cpu_count() or 1) / RSA_SIGN_S  # 4,000/s on this 2-core machine
RSA_MIXED_RATE = 0.8 * RSA_CAPACITY
# Gateway users: each is one concurrent transaction; the SDK batches the users of a process, so more users
# mean fuller batches, not more gRPC messages. Paced users offer a rate (a gateway's transactions arrive;
# they do not wait for each other), so latency is the system's, not users / TPS as in a closed loop.
# `symmetric` offers 8% above its target, so a pass shows the target held with some margin; `burst`
# is closed-loop (no wait): its users bound latency (48 users at 10,000 TPS is 4.8 ms on average).
SYMMETRIC_USERS = 128
SYMMETRIC_OFFERED_TPS = 5400
BURST_USERS = 48
MIXED_SYM_USERS = 32
MIXED_RSA_USERS = 64
FAILOVER_USERS = 96

SYMMETRIC_MIX: dict[str, float] = {
    "sym:EncryptData/AES256-CBC": 20, "sym:DecryptData/AES256-CBC": 15, "sym:EncryptData/AES128-ECB": 10,
    "sym:EncryptData/TDES2-CBC": 5, "sym:DecryptData/TDES2-ECB": 5,
    "sym:GenerateMac/CMAC-AES128": 15, "sym:VerifyMac/CMAC-AES128": 10,
    "sym:GenerateMac/HMAC-SHA256": 10, "sym:VerifyMac/HMAC-SHA256": 5,
    # optional: only while hsmlb.v1 has these RPCs (ops.resolve_mix leaves them out otherwise)
    "sym:GenerateCardValidationData/CVV": 3, "sym:VerifyCardValidationData/CVV": 5,
    "sym:TranslatePinData/ISO0": 5, "sym:VerifyAuthRequestCryptogram/EMV-A": 5,
}
ASYMMETRIC_MIX: dict[str, float] = {"asym:Sign/RSA2048": 45, "asym:Sign/ECDSA-P256": 45,
                                    "asym:Verify/ECDSA-P256": 5, "asym:Verify/RSA2048": 5}
CORE_SYMMETRIC = {k: v for k, v in SYMMETRIC_MIX.items() if not k.split(":")[1].startswith(
    ("GenerateCard", "VerifyCard", "TranslatePin", "VerifyAuth"))}


@dataclass(frozen=True)
class Thresholds:
    min_tps: float
    p99_ms: dict[str, float]  # per op class tag: "sym", "asym"
    max_failure_ratio: float = 0.0


@dataclass(frozen=True)
class UserGroup:
    """One Locust user class of a profile: a fixed number of users on one mix."""

    name: str  # becomes the Locust class name
    mix: dict[str, float]
    users: int
    kind: Literal["gateway", "unary", "stream"] = "unary"  # gateway: batched through the SDK's sync client
    rate_per_user: float | None = None  # requests/s each user paces itself to; None = no wait


@dataclass(frozen=True)
class Drill:
    """Failover drill: fail one node through the Admin API while load runs, then restore it."""

    node: str = "node-a"
    fail_after_s: float = 8.0
    hold_s: float = 10.0


@dataclass(frozen=True)
class StreamLoad:
    """The own asyncio client's shape: N streams, K requests in flight on each."""

    streams: int = 4
    in_flight: int = 32
    warmup_s: float = 1.0
    client: Literal["stream", "sdk"] = "stream"  # raw one-op Stream messages, or the SDK's batching AsyncClient
    mix: dict[str, float] = field(default_factory=lambda: dict(SYMMETRIC_MIX))


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    duration_s: float
    thresholds: Thresholds
    groups: tuple[UserGroup, ...] = ()  # Locust profiles
    spawn_rate: float = 50.0
    processes: int = 1  # default Locust processes (the command line can change it)
    driver: Literal["locust", "stream"] = "locust"
    stream: StreamLoad = field(default_factory=StreamLoad)  # driver "stream"
    drill: Drill | None = None
    fault_injection: bool = False  # test-only hooks in the daemon; no profile needs them yet

    @property
    def users(self) -> int:
        return sum(g.users for g in self.groups)

    @property
    def mix(self) -> dict[str, float]:
        """All ops of the profile (their classes get p99 rows in the verdict)."""
        merged: dict[str, float] = {}
        for group in self.groups:
            for name, weight in group.mix.items():
                merged[name] = merged.get(name, 0.0) + weight
        return merged if self.driver == "locust" else dict(self.stream.mix)


def _t(min_tps: float, sym: float | None = SYM_P99_MS, asym: float | None = None) -> Thresholds:
    p99 = {k: v for k, v in (("sym", sym), ("asym", asym)) if v is not None}
    return Thresholds(min_tps=min_tps, p99_ms=p99)


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("smoke", "CI plumbing check: every user kind, low paced rate, lenient latency", 10,
            Thresholds(min_tps=20, p99_ms={"sym": 100.0, "asym": 250.0}),
            groups=(UserGroup("SmokeGateway", {**CORE_SYMMETRIC, "asym:Sign/ECDSA-P256": 5}, users=4, kind="gateway",
                              rate_per_user=25),
                    UserGroup("SmokeUnary", {**CORE_SYMMETRIC, "asym:Sign/ECDSA-P256": 5, "asym:Sign/RSA2048": 2},
                              users=2, rate_per_user=25),
                    UserGroup("SmokeStream", CORE_SYMMETRIC, users=2, kind="stream", rate_per_user=25)),
            spawn_rate=10),
    Profile("symmetric", f"issue target: >= 5,000 TPS for 60 s, p99 <= 10 ms, 0 failures: {SYMMETRIC_USERS} Locust "
            f"gateway users (transactions) offering {SYMMETRIC_OFFERED_TPS:,}/s, batched by the SDK, 2 processes", 60,
            _t(5000), groups=(UserGroup("SymmetricGateway", SYMMETRIC_MIX, users=SYMMETRIC_USERS, kind="gateway",
                                        rate_per_user=SYMMETRIC_OFFERED_TPS / SYMMETRIC_USERS),),
            spawn_rate=SYMMETRIC_USERS, processes=2),
    Profile("symmetric-unary", "the symmetric mix one unary call per operation (plain-stub clients), 2 processes",
            60, _t(5000), groups=(UserGroup("SymmetricUnary", SYMMETRIC_MIX, users=24),), spawn_rate=24, processes=2),
    Profile("symmetric-stream", "symmetric mix over Locust Stream users (one request in flight per stream)", 60,
            _t(5000), groups=(UserGroup("SymmetricStream", SYMMETRIC_MIX, users=24, kind="stream"),),
            spawn_rate=24, processes=2),
    Profile("asymmetric", "RSA-2048 and ECDSA P-256 signing (and a few verifies), p99 <= 50 ms", 60,
            _t(1000, sym=None, asym=ASYM_P99_MS),
            groups=(UserGroup("AsymmetricUnary", ASYMMETRIC_MIX, users=16),), spawn_rate=16, processes=2),
    Profile("mixed", f"symmetric gateway users while RSA-2048 signing runs at ~{RSA_MIXED_RATE:,.0f}/s "
            "(80% of token capacity), all batched by the SDK", 60, _t(5000, asym=ASYM_P99_MS),
            groups=(UserGroup("MixedSymmetric", SYMMETRIC_MIX, users=MIXED_SYM_USERS, kind="gateway"),
                    UserGroup("MixedRsa", {"asym:Sign/RSA2048": 1}, users=MIXED_RSA_USERS, kind="gateway",
                              rate_per_user=RSA_MIXED_RATE / MIXED_RSA_USERS)),
            spawn_rate=MIXED_SYM_USERS + MIXED_RSA_USERS, processes=2),
    Profile("burst", "beyond 10,000 TPS on Locust: gateway users batched by the SDK, 15 s", 15, _t(10_000),
            groups=(UserGroup("BurstGateway", SYMMETRIC_MIX, users=BURST_USERS, kind="gateway"),),
            spawn_rate=BURST_USERS, processes=2),
    Profile("burst-async", "the own asyncio client: the SDK's AsyncClient, closed loop, symmetric mix", 30,
            _t(20_000), driver="stream", stream=StreamLoad(streams=2, in_flight=128, client="sdk")),
    Profile("burst-stream", "the own asyncio client on the one-op Stream (no batching), for comparison", 30,
            _t(10_000), driver="stream", stream=StreamLoad(streams=4, in_flight=32)),
    Profile("failover", "3,000 TPS while one node is failed and restored through the Admin API; 0 failures; "
            "gateway users batched by the SDK", 40,
            _t(2850), groups=(UserGroup("FailoverGateway", CORE_SYMMETRIC, users=FAILOVER_USERS, kind="gateway",
                                        rate_per_user=3000 / FAILOVER_USERS),),
            spawn_rate=FAILOVER_USERS, processes=2, drill=Drill()),
)}


def get(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None


def with_overrides(profile: Profile, *, min_tps: float | None = None, p99_sym_ms: float | None = None,
                   p99_asym_ms: float | None = None, max_failure_ratio: float | None = None,
                   duration_s: float | None = None) -> Profile:
    """The profile with command-line threshold/duration overrides applied (None = keep)."""
    t = profile.thresholds
    p99 = dict(t.p99_ms)
    if p99_sym_ms is not None:
        p99["sym"] = p99_sym_ms
    if p99_asym_ms is not None:
        p99["asym"] = p99_asym_ms
    thresholds = Thresholds(min_tps=t.min_tps if min_tps is None else min_tps, p99_ms=p99,
                            max_failure_ratio=t.max_failure_ratio if max_failure_ratio is None else max_failure_ratio)
    return replace(profile, thresholds=thresholds, duration_s=profile.duration_s if duration_s is None else duration_s)

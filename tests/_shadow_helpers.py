"""Helpers for the shadowing tests: routed configs on the payment cluster, a request mix with a fixed
answer per request, Stream and unary drivers that keep every answer's bytes, and the shadow report."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from hsmlb.dev.cluster import dev_routes
from hsmlb.dev.regions import Emulator
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._payment_backend import fmt0, fmt4, iso0_clear, tdes
from tests._payment_common import MATERIAL, PUBLIC, h
from tests.conftest import PaymentCluster, sym
from tests.test_region_failover import MIX

REGIONS = ("apc-east", "apc-west")
TOKENS = ("node-a", "node-b", "node-c", "node-d")
Request = tuple[str, Any]  # (StreamRequest oneof field, request message)


def shadow_config(cluster: PaymentCluster, name: str, shadow: bool = True, route: dict[str, Any] | None = None,
                  router: dict[str, Any] | None = None, **settings: Any) -> Path:
    """The cluster's tokens and regions with the dev route (tokens primary, regions failover), shadowing
    every token answer to the regions when `shadow`; `route` overrides fields of that route. The adaptive
    shadow budget is off unless asked for: these tests count every shadowed answer, and on a loaded CI host
    the budget would rightly skip some (its own tests turn it on)."""
    def mutate(data: dict[str, Any]) -> None:
        routes = dev_routes(shadow)
        routes[0].update(route or {})
        data["routes"] = routes
        data["shadow"] = {"gate_min_samples": 20, "budget_adaptive": False, "executor_nice": 0, **settings}
        if router:
            data["router"] = router
    path = cluster.state_dir / f"hsmlb-{name}.yaml"
    path.with_suffix(".state.json").unlink(missing_ok=True)
    return cluster.write_variant(path, mutate=mutate)


def symmetric_and_payment_mix() -> list[Request]:
    """Deterministic operations the tokens and the regions both serve (one of each), plus an ISO-4 PIN
    translation (randomized output)."""
    v = PUBLIC["pinblock-iso4-x9.24-3-fields"]
    pan = v["inputs"]["pan"]
    iso0 = h(tdes(MATERIAL["alias/pek-tdes"], iso0_clear(v["inputs"]["pin"], pan)))
    return [*[(t.field, t.request) for t in MIX], *_native(), iso4_translation(pan, iso0),
            ("translate_pin_data", pb.TranslatePinDataRequest(
                incoming_key_identifier="alias/pek-tdes", outgoing_key_identifier="alias/pek-tdes3",
                incoming_translation_attributes=fmt0(pan), outgoing_translation_attributes=fmt0(pan),
                encrypted_pin_block=iso0))]


def iso4_translation(pan: str, iso0_block: str) -> Request:
    return ("translate_pin_data", pb.TranslatePinDataRequest(
        incoming_key_identifier="alias/pek-tdes", outgoing_key_identifier="alias/pek-aes128",
        incoming_translation_attributes=fmt0(pan), outgoing_translation_attributes=fmt4(pan),
        encrypted_pin_block=iso0_block))


def _native() -> list[Request]:
    plain = "6BC1BEE22E409F96E93D7E117393172A"
    return [
        ("encrypt_data", pb.EncryptDataRequest(key_identifier="alias/dek-aes256", plain_text=plain,
                                               encryption_attributes=sym(pb.CBC, "000102030405060708090A0B0C0D0E0F"))),
        ("decrypt_data", pb.DecryptDataRequest(key_identifier="alias/zek-aes128",
                                               cipher_text="3AD77BB40D7A3660A89ECAF32466EF97",
                                               decryption_attributes=sym(pb.ECB))),
        ("generate_mac", pb.GenerateMacRequest(key_identifier="alias/cmac-aes128", message_data=plain,
                                               generation_attributes=pb.MacAttributes(algorithm=pb.CMAC))),
    ]


def unservable_by_regions() -> list[Request]:
    return [("sign", pb.SignRequest(key_identifier="alias/sign-rsa", message="00112233",
                                    signing_algorithm=pb.RSASSA_PKCS1_V1_5_SHA_256)),
            ("generate_random", pb.GenerateRandomRequest(number_of_bytes=16))]


def stream(channel: grpc.Channel, requests: list[Request]) -> list[bytes]:
    """Every request over one Stream; the answers' bytes in request order (a status is an answer too)."""
    messages = [pb.StreamRequest(request_id=i + 1, timeout_ms=10_000, **{f: r}) for i, (f, r) in enumerate(requests)]
    answers = {r.request_id: r for r in pb_grpc.OperationsStub(channel).Stream(iter(messages), timeout=120)}
    assert sorted(answers) == [m.request_id for m in messages]
    return [answers[m.request_id].SerializeToString(deterministic=True) for m in messages]


def failed(answers: list[bytes]) -> list[str]:
    out = []
    for raw in answers:
        response = pb.StreamResponse.FromString(raw)
        if response.WhichOneof("result") == "status":
            out.append(f"{response.status.code}: {response.status.message}")
    return out


def report(channel: grpc.Channel, settle_s: float = 15.0) -> dict[str, dict[str, Any]]:
    """The shadow report by op (candidate side), once no shadow call is in flight."""
    admin = pb_grpc.AdminStub(channel)
    deadline = time.monotonic() + settle_s
    reply = admin.GetShadowReport(pb.GetShadowReportRequest(), timeout=10)
    while reply.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
        reply = admin.GetShadowReport(pb.GetShadowReportRequest(), timeout=10)
    assert reply.in_flight == 0
    return {r.op: r for r in reply.ops if r.side == "candidate"}


def emulator_injected(emulator: Emulator) -> dict[str, int]:
    with urllib.request.urlopen(emulator.endpoint_url + "/_emulator/stats", timeout=5) as response:
        return dict(json.loads(response.read())["injected"])


def ops_ok(channel: grpc.Channel) -> dict[str, int]:
    nodes = pb_grpc.AdminStub(channel).ListNodes(pb.ListNodesRequest(), timeout=10).nodes
    return {n.name: n.ops_ok for n in nodes}

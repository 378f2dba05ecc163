"""Pure parts of security: the policy's decisions, the token bucket, the audit chain and its verifier
(tamper cases on a log the real writer made, in a temp dir)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hsmlb.api.filters import Call, Item
from hsmlb.audit.config import AuditConfig
from hsmlb.audit.filter import AuditFilter
from hsmlb.audit.verify import verify
from hsmlb.audit.writer import AuditWriter
from hsmlb.auth.config import AuthConfig
from hsmlb.auth.policy import Policy
from hsmlb.auth.ratelimit import TokenBucket
from hsmlb.clock import FakeClock
from hsmlb.config import ConfigError, parse_config
from hsmlb.ops import KeyInfo, Operation, OpKind
from tests._audit_helpers import TAMPER_CASES, tamper

APP = "spiffe://hsmlb.dev/app"


def policy(**kw: object) -> Policy:
    return Policy(AuthConfig.model_validate(kw))


def test_open_policy_without_callers_allows_everything() -> None:
    grant = policy().resolve("anonymous")
    assert grant is not None and grant.admin and grant.op_denied("sign", ["alias/x"]) == ""


def test_deny_by_default_once_a_caller_is_configured() -> None:
    p = policy(callers=[{"identity": APP, "operations": ["encrypt_data"], "keys": ["alias/zek-*"]}])
    assert p.resolve("anonymous") is None
    assert p.resolve("spiffe://hsmlb.dev/other") is None
    grant = p.resolve(APP)
    assert grant is not None and not grant.admin
    assert grant.op_denied("encrypt_data", ["alias/zek-aes128"]) == ""
    assert grant.op_denied("encrypt_data", ["alias/pek-tdes"]) == \
        f"caller {APP} may not use key alias/pek-tdes for encrypt_data"
    assert grant.op_denied("sign", ["alias/zek-aes128"]) == f"caller {APP} may not call sign"
    # every key an operation touches is checked (a translation's incoming key too)
    assert "alias/pek-tdes" in grant.op_denied("encrypt_data", ["alias/zek-aes128", "alias/pek-tdes"])


def test_patterns_deny_first_and_first_rule_wins() -> None:
    p = policy(deny=["spiffe://hsmlb.dev/bad*"], callers=[
        {"identity": "spiffe://hsmlb.dev/*", "operations": ["*"], "keys": ["*"]},
        {"identity": APP, "operations": [], "keys": []}])
    assert p.resolve("spiffe://hsmlb.dev/badactor") is None
    grant = p.resolve(APP)
    assert grant is not None and grant.op_denied("sign", ["alias/anything"]) == ""
    assert p.resolve("spiffe://other.org/app") is None  # patterns are anchored


def test_unknown_operation_in_config_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"callers.0.operations: unknown operation 'encrypt'"):
        parse_config({"nodes": [{"name": "a", "module": "/x", "token_label": "a", "pin_env": "P"}],
                      "auth": {"callers": [{"identity": APP, "operations": ["encrypt"]}]}})


def test_token_bucket_refills_at_its_rate_and_says_when() -> None:
    clock = FakeClock()
    bucket = TokenBucket(per_s=2.0, burst=3.0, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    clock.advance(0.25)
    assert bucket.take() == pytest.approx(0.25)  # half a token there: the rest in 0.25 s
    clock.advance(0.25)
    assert bucket.take() == 0.0
    clock.advance(100)
    assert [bucket.take() for _ in range(4)][-1] > 0  # never more than the burst


# -- the audit chain ------------------------------------------------------------------------------
def make_log(tmp: Path, records: int = 40, rotate_bytes: int = 4096) -> tuple[Path, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    cfg = AuditConfig(dir=tmp / "audit", signing_key_file=tmp / "unused", flush_interval_ms=5,
                      rotate_bytes=rotate_bytes, checkpoint_interval_s=3600)
    writer = AuditWriter(cfg, key)
    writer.start()
    flt = AuditFilter(writer)
    call = Call("/hsmlb.v1.Operations/Stream", "ipv4:127.0.0.1:5555", identity=APP)
    for i in range(records):
        item = Item("encrypt_data", request_id=i, op=Operation(OpKind.ENCRYPT, "alias/zek-aes128", (b"x",)))
        item.op.node = "node-a"  # type: ignore[union-attr]
        item.end(grpc.StatusCode.OK if i % 5 else grpc.StatusCode.PERMISSION_DENIED,
                 key=KeyInfo("alias/zek-aes128", "zek-aes128", "AES", "C1D0F8", frozenset()))
        flt.done(call, [item])
        if i % 15 == 14:  # let the writer flush (and rotate: 15 records pass 4 KiB) before going on
            deadline = time.monotonic() + 10
            while (writer.queue or writer._out) and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.02)
    flt.close()
    return cfg.dir, key


def test_a_clean_log_verifies_and_spans_files(tmp_path: Path) -> None:
    directory, key = make_log(tmp_path)
    report = verify(directory, key.public_key())
    assert report.ok, report.problem
    assert report.files >= 3 and report.checkpoints >= report.files
    lines = [json.loads(line) for p in sorted(directory.iterdir()) for line in p.read_text().splitlines()]
    ops = [r for r in lines if r["type"] == "op"]
    assert [r["request_id"] for r in ops] == list(range(40))
    assert {r["type"] for r in lines} == {"file", "event", "op", "checkpoint"}
    assert ops[0]["outcome"] == "PERMISSION_DENIED" and ops[1]["outcome"] == "OK"
    assert ops[1]["kcv"] == "C1D0F8" and ops[1]["node"] == "node-a" and ops[1]["caller"] == APP


@pytest.mark.parametrize("case", sorted(TAMPER_CASES))
def test_each_tamper_fails_and_names_the_place(tmp_path: Path, case: str) -> None:
    directory, key = make_log(tmp_path)
    touched = tamper(directory, tmp_path / case, case)
    report = verify(tmp_path / case, key.public_key())
    assert not report.ok
    assert TAMPER_CASES[case] in report.problem, report.problem
    assert touched.name in report.problem or case == "truncate"  # the place: the file (and line)


def test_wrong_public_key_fails(tmp_path: Path) -> None:
    directory, _ = make_log(tmp_path, records=5)
    assert "forged" in verify(directory, Ed25519PrivateKey.generate().public_key()).problem


def test_a_restart_resumes_the_chain_and_cuts_a_torn_line(tmp_path: Path) -> None:
    directory, key = make_log(tmp_path, records=10, rotate_bytes=1 << 20)
    last = sorted(directory.iterdir())[-1]
    with last.open("ab") as f:
        f.write(b'{"seq": 99, "torn')  # a crash mid-write
    cfg = AuditConfig(dir=directory, signing_key_file=tmp_path / "unused", flush_interval_ms=5)
    writer = AuditWriter(cfg, key)
    writer.start()
    writer.close()
    report = verify(directory, key.public_key())
    assert report.ok, report.problem
    assert report.files == 2


@pytest.mark.parametrize("variant", ["plain", "denied", "translation", "unicode", "no_key", "percent"])
def test_fast_operation_records_are_canonical_json(variant: str) -> None:
    """The writer's hand-made encoding of an operation record is byte-identical to canonical(record),
    which is what verify recomputes."""
    from hsmlb.audit.chain import canonical
    from hsmlb.audit.writer import build, op_body

    entry = ["op", 1765000000.5, APP, "ipv4:127.0.0.1:5555", "/hsmlb.v1.Operations/StreamBatch", "encrypt_data",
             "alias/zek-aes128", (), "zek-aes128", "C1D0F8", "node-a", 1, "OK", "", 0.000123, 17, ""]
    if variant == "denied":
        entry[12:14] = ["PERMISSION_DENIED", f"caller {APP} may not use key alias/x for encrypt_data"]
    elif variant == "translation":
        entry[7] = ("alias/pek-tdes", "alias/pek-tdes3")
        entry[16] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    elif variant == "unicode":
        entry[2], entry[6] = 'spiffe://x/"é"\u2028', "alias/\\ü"
    elif variant == "no_key":
        entry[6], entry[8], entry[9] = None, "", ""
    elif variant == "percent":  # the writer splices into a %-template: a literal % must survive
        entry[2], entry[6] = "spiffe://x/100%25%s%d", "alias/%(x)s"
    for seq, wall, latency, request_id in ((42, 1765000000.5, 0.000123, 17), (43, 1765000001.000007, 2.5, 18)):
        entry[1], entry[14], entry[15] = wall, latency, request_id  # the same shape again: the cached template
        record = build(tuple(entry))
        record.update(seq=seq, prev="ab" * 32)
        assert op_body(tuple(entry), seq, "ab" * 32) == canonical(record)


def test_security_series_count_denials_and_the_audit_state(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from hsmlb.auth.filter import AuthFilter
    from hsmlb.auth.metrics import SecurityCollector
    from hsmlb.errors import PermissionDenied

    auth = AuthFilter(AuthConfig.model_validate({"callers": [{"identity": APP, "operations": ["sign"]}]}))
    call = Call("/hsmlb.v1.Operations/EncryptData", "ipv4:127.0.0.1:1")
    auth.open(call)  # no certificate: anonymous, no rule
    with pytest.raises(PermissionDenied, match="caller anonymous may not call encrypt_data with key alias/k"):
        auth.admit(call, Item("encrypt_data", op=Operation(OpKind.ENCRYPT, "alias/k", ())))
    cfg = AuditConfig(dir=tmp_path / "audit", signing_key_file=tmp_path / "unused", flush_interval_ms=5)
    writer = AuditWriter(cfg, Ed25519PrivateKey.generate())
    writer.start()
    registry = CollectorRegistry()
    registry.register(SecurityCollector([auth, AuditFilter(writer)]))
    text = generate_latest(registry).decode()
    writer.close()
    assert "hsmlb_auth_denied_total 1.0" in text
    assert "hsmlb_auth_rate_limited_total 0.0" in text
    assert "hsmlb_audit_writable 1.0" in text and "hsmlb_audit_alarms_total 0.0" in text


def test_identity_prefers_spiffe_then_uri_then_dns_then_cn() -> None:
    from hsmlb.auth.identity import choose

    assert choose(["app.example.org", "10.0.0.1", "spiffe://example.org/app"], True) == "spiffe://example.org/app"
    assert choose(["10.0.0.1", "ops@example.org", "https://example.org/app"], True) == "https://example.org/app"
    assert choose(["10.0.0.1", "ops@example.org", "app.example.org"], True) == "app.example.org"
    assert choose(["app"], False) == "app"
    assert choose([], True) == "anonymous"


class _Verified:
    """What a grpc context reports for a verified client certificate with a SPIFFE URI SAN."""

    def peer_identities(self) -> list[bytes]:
        return [APP.encode()]

    def peer_identity_key(self) -> str:
        return "x509_subject_alternative_name"


def test_log_only_reports_without_denying_and_rate_limits_per_caller() -> None:
    from hsmlb.auth.filter import AuthFilter, RateLimited

    rule = {"identity": APP, "operations": ["encrypt_data"], "keys": ["alias/zek-*"],
            "rate_limit": {"per_s": 1, "burst": 1}}
    clock = FakeClock()
    sign = Item("sign", op=Operation(OpKind.SIGN, "alias/zek-aes128", ()))
    encrypt = Item("encrypt_data", op=Operation(OpKind.ENCRYPT, "alias/zek-aes128", ()))
    watch = AuthFilter(AuthConfig.model_validate({"callers": [rule], "log_only": True}), clock)
    call = Call("/hsmlb.v1.Operations/Batch", "ipv4:127.0.0.1:1", context=_Verified())  # type: ignore[arg-type]
    watch.open(call)
    assert call.identity == APP
    watch.admit(call, sign)  # would be denied: only counted
    watch.admit(call, encrypt)
    watch.admit(call, encrypt)  # over the rate: only counted
    assert (watch.denied, watch.rate_limited) == (1, 1)
    enforce = AuthFilter(AuthConfig.model_validate({"callers": [rule]}), clock)
    call = Call("/hsmlb.v1.Operations/Batch", "ipv4:127.0.0.1:1", context=_Verified())  # type: ignore[arg-type]
    enforce.open(call)
    enforce.admit(call, encrypt)
    with pytest.raises(RateLimited, match="retry after 1000 ms") as info:
        enforce.admit(call, encrypt)
    assert info.value.retry_after_ms == 1000 and info.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    clock.advance(1.0)
    enforce.admit(call, encrypt)  # the bucket refilled
    other = Call("/hsmlb.v1.Operations/Batch", "ipv4:127.0.0.1:2", context=_Verified())  # type: ignore[arg-type]
    enforce.open(other)  # a new RPC of the same caller shares its bucket
    with pytest.raises(RateLimited):
        enforce.admit(other, encrypt)

"""Acceptance 3 and 4 of the security issue on a real daemon: one audit record per operation on every
path (unary, Stream, StreamBatch, Batch), denials and drills included, nothing sensitive in any file,
`hsmlb audit verify` passing, and failing with the place named for each tamper; then a full disk
(a small tmpfs): fail-closed refuses and recovers with the chain intact, alarm mode serves on."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hsmlb.audit.cli import keygen
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._audit_helpers import TAMPER_CASES, audit_files, records, tamper
from tests._daemon_helpers import NIST_ECB, nist_request, wait_for
from tests._sensitive_plant import PANS, PIN, SECRETS, STREAM_FIELDS, base_requests, leaks, planted_requests
from tests._tls_helpers import APP, OPERATOR, Pki, make_pki, secure_config, start_secure
from tests.conftest import Cluster, DaemonProcess

OPS_SERVICE = "/hsmlb.v1.Operations/"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def audit_section(directory: Path, key: Path, **extra: Any) -> dict[str, Any]:
    return {"dir": str(directory), "signing_key_file": str(key), **extra}


def run_verify(directory: Path, public_key: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsmlb", "audit", "verify", str(directory), "--public-key",
                           str(public_key), *extra], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def mixed_run(cluster: Cluster, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A daemon with audit, a mixed run through it, then a clean stop: what was sent, and the log."""
    tmp = tmp_path_factory.mktemp("audit")
    keygen(tmp / "signing.key")
    config = secure_config(cluster, pki, tmp / "hsmlb.yaml", nodes=("node-a", "node-b"),
                           audit=audit_section(tmp / "audit", tmp / "signing.key", rotate_bytes=64 * 1024))
    daemon = start_secure(config, tmp / "daemon.log", pki)
    sent: Counter[tuple[str, str, int]] = Counter()  # (caller, method, request_id)
    try:
        with pki.channel(daemon.address, "operator") as op_channel, pki.channel(daemon.address, "app") as app_channel:
            ops, app = pb_grpc.OperationsStub(op_channel), pb_grpc.OperationsStub(app_channel)
            for method, request in base_requests().items():  # unary, payment ops with planted values included
                with contextlib.suppress(grpc.RpcError):
                    getattr(ops, method)(request, timeout=10)
                sent[(OPERATOR, OPS_SERVICE + method, 0)] += 1
            stream = [pb.StreamRequest(request_id=i, **{STREAM_FIELDS[m]: r})
                      for i, (m, r) in enumerate(base_requests().items(), 1)]
            assert len(list(ops.Stream(iter(stream), timeout=30))) == len(stream)
            sent.update((OPERATOR, OPS_SERVICE + "Stream", m.request_id) for m in stream)
            planted = [pb.StreamRequest(request_id=i, **{STREAM_FIELDS[m]: r})
                       for i, (m, r) in enumerate(planted_requests(), 1000)]
            batches = [pb.BatchRequest(items=planted[i:i + 200]) for i in range(0, len(planted), 200)]
            answered = sum(len(r.items) for r in ops.StreamBatch(iter(batches), timeout=120))
            assert answered == len(planted)
            sent.update((OPERATOR, OPS_SERVICE + "StreamBatch", m.request_id) for m in planted)
            assert len(ops.Batch(pb.BatchRequest(items=stream), timeout=30).items) == len(stream)
            sent.update((OPERATOR, OPS_SERVICE + "Batch", m.request_id) for m in stream)
            # app: an allowed call (EncryptData on a zek key) and denials (other operations)
            for method in ("EncryptData", "Sign", "TranslatePinData"):
                with contextlib.suppress(grpc.RpcError):
                    getattr(app, method)(base_requests()[method], timeout=10)
                sent[(APP, OPS_SERVICE + method, 0)] += 1
            assert app.EncryptData(nist_request(), timeout=10).cipher_text == NIST_ECB
            sent[(APP, OPS_SERVICE + "EncryptData", 0)] += 1
            other_key = pb.EncryptDataRequest(key_identifier="alias/pek-tdes", plain_text="00" * 8,
                                              encryption_attributes=nist_request().encryption_attributes)
            with pytest.raises(grpc.RpcError):
                app.EncryptData(other_key, timeout=10)
            sent[(APP, OPS_SERVICE + "EncryptData", 0)] += 1
            with pytest.raises(grpc.RpcError):
                pb_grpc.AdminStub(app_channel).ListNodes(pb.ListNodesRequest(), timeout=10)
            admin = pb_grpc.AdminStub(op_channel)  # a drill
            admin.SetNodeState(pb.SetNodeStateRequest(node="node-b", action=pb.FAIL, requested_by="x"), timeout=10)
            admin.SetNodeState(pb.SetNodeStateRequest(node="node-b", action=pb.RESTORE), timeout=10)
    finally:
        assert daemon.stop() == 0
    return {"dir": tmp / "audit", "public_key": tmp / "signing.key.pub", "sent": sent, "tmp": tmp,
            "log": daemon.log_text()}


def test_mixed_run_verifies_with_one_record_per_operation(mixed_run: dict[str, Any]) -> None:
    result = run_verify(mixed_run["dir"], mixed_run["public_key"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: ")
    recs = records(mixed_run["dir"])
    got = Counter((r["caller"], r["method"], r["request_id"]) for r in recs if r["type"] == "op")
    assert got == mixed_run["sent"]  # every operation exactly once, each batched one separately
    assert len(audit_files(mixed_run["dir"])) >= 3  # rotated by size
    by_outcome = Counter(r["outcome"] for r in recs if r["type"] == "op")
    assert by_outcome["OK"] > 0 and by_outcome["PERMISSION_DENIED"] >= 3
    denied = [r for r in recs if r["type"] == "op" and r["caller"] == APP and r["outcome"] == "PERMISSION_DENIED"]
    assert any("may not use key alias/pek-tdes" in r["detail"] for r in denied)
    ok = next(r for r in recs if r["type"] == "op" and r["outcome"] == "OK" and r["op"] == "encrypt_data")
    assert ok["kcv"] and ok["node"] in ("node-a", "node-b") and ok["key_ref"] and ok["peer"].startswith("ipv4:")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ok["ts"])
    admin = [(r["caller"], r["action"], r["outcome"]) for r in recs if r["type"] == "admin"]
    assert (OPERATOR, "set_node_state", "OK") in admin
    assert (APP, "refused", "PERMISSION_DENIED") in admin
    events = [r["event"] for r in recs if r["type"] == "event"]
    assert events[:2] == ["audit_start", "daemon_start"] and events[-2:] == ["daemon_stop", "audit_stop"]


def test_no_planted_value_in_any_audit_file(mixed_run: dict[str, Any]) -> None:
    for path in audit_files(mixed_run["dir"]):
        raw = path.read_text()
        for name, value in SECRETS.items():
            assert value.upper() not in raw.upper(), f"{name} in {path.name}"
        assert not any(pan in raw for pan in PANS) and PIN not in raw
        # the detector's broader net, without the chain's own hashes and signatures
        fields = [{k: v for k, v in json.loads(line).items()
                   if k not in ("hash", "prev", "covers_hash", "sig", "prev_sig")} for line in raw.splitlines()]
        assert leaks(json.dumps(fields)) == [], path.name


@pytest.mark.parametrize("case", sorted(TAMPER_CASES))
def test_each_tamper_makes_verify_fail_and_name_the_place(mixed_run: dict[str, Any], case: str) -> None:
    copy = mixed_run["tmp"] / f"tampered-{case}"
    touched = tamper(mixed_run["dir"], copy, case)
    result = run_verify(copy, mixed_run["public_key"])
    assert result.returncode == 1, result.stdout
    assert TAMPER_CASES[case] in result.stdout
    assert touched.name in result.stdout or case == "truncate"


# -- acceptance 4: a full disk ----------------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the filesystem to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                for _ in range(1 << 20):  # bounded: the filesystem is 512 KiB
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    probe = os.open(directory / "probe", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as info:
            os.write(probe, b"x" * 4096)
        assert info.value.errno == errno.ENOSPC
    finally:
        os.close(probe)
    return filler


def encrypt_code(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        pb_grpc.OperationsStub(channel).EncryptData(nist_request(), timeout=10)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def _full_disk_daemon(cluster: Cluster, pki: Pki, tmp: Path, fs: Path, mode: str) -> DaemonProcess:
    keygen(tmp / "signing.key")
    config = secure_config(cluster, pki, tmp / "hsmlb.yaml", nodes=("node-a",),
                           audit=audit_section(fs / "audit", tmp / "signing.key", on_failure=mode))
    return start_secure(config, tmp / "daemon.log", pki)


def test_full_disk_fails_closed_and_recovers_with_the_chain_intact(cluster: Cluster, pki: Pki, tmp_path: Path,
                                                                   small_fs: Path) -> None:
    daemon = _full_disk_daemon(cluster, pki, tmp_path, small_fs, "fail_closed")
    sent = 0
    try:
        with pki.channel(daemon.address, "operator") as channel:
            assert encrypt_code(channel) == grpc.StatusCode.OK
            filler = fill(small_fs)

            def refused() -> bool:
                nonlocal sent
                sent += 1
                return encrypt_code(channel) == grpc.StatusCode.UNAVAILABLE
            assert wait_for(refused, 20, step=0.05)
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.OperationsStub(channel).EncryptData(nist_request(), timeout=10)
            sent += 1
            assert "audit log cannot be written" in info.value.details()
            admin = pb_grpc.AdminStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                admin.SetNodeState(pb.SetNodeStateRequest(node="node-a", action=pb.DRAIN), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert admin.ListNodes(pb.ListNodesRequest(), timeout=10).nodes  # operators can still look
            filler.unlink()

            def served() -> bool:
                nonlocal sent
                sent += 1
                return encrypt_code(channel) == grpc.StatusCode.OK
            assert wait_for(served, 20, step=0.05)
    finally:
        assert daemon.stop() == 0
    assert "AUDIT ALARM" in daemon.log_text()
    result = run_verify(small_fs / "audit", tmp_path / "signing.key.pub")
    assert result.returncode == 0, result.stdout
    recs = records(small_fs / "audit")
    ops = [r for r in recs if r["type"] == "op"]
    assert len(ops) == sent + 1  # nothing lost: the refused ones too
    assert "UNAVAILABLE" in {r["outcome"] for r in ops}
    assert "audit_recovered" in [r.get("event") for r in recs]


def test_full_disk_in_alarm_mode_serves_on_and_counts(cluster: Cluster, pki: Pki, tmp_path: Path,
                                                      small_fs: Path) -> None:
    daemon = _full_disk_daemon(cluster, pki, tmp_path, small_fs, "alarm")
    try:
        with pki.channel(daemon.address, "operator") as channel:
            filler = fill(small_fs)
            for _ in range(20):
                assert encrypt_code(channel) == grpc.StatusCode.OK
            assert wait_for(lambda: "AUDIT ALARM" in daemon.log_text(), 20)
            filler.unlink()
            assert wait_for(lambda: "writable again" in daemon.log_text(), 20)
    finally:
        assert daemon.stop() == 0
    assert run_verify(small_fs / "audit", tmp_path / "signing.key.pub").returncode == 0
    recovered = [r for r in records(small_fs / "audit") if r.get("event") == "audit_recovered"]
    assert recovered and int(recovered[0]["detail"].split()[0]) >= 1  # the failures, counted

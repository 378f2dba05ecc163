"""`hsmlb dev up --tls` and the command line over mTLS: the dev CA's callers, `hsmlb nodes`/`node`/`health`
with --ca/--cert/--key (and their environment variables), refused without them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hsmlb.auth.devca import spiffe_id
from tests._tls_helpers import Pki, start_secure
from tests.conftest import Cluster


def hsmlb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsmlb", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_dev_up_tls_and_the_cli_over_mtls(cluster: Cluster, tmp_path: Path) -> None:
    state = tmp_path / "dev"
    shutil.copytree(cluster.state_dir, state, ignore=shutil.ignore_patterns("*.log", "hsmlb*.yaml"))
    up = hsmlb("dev", "up", "--state-dir", str(state), "--listen", "127.0.0.1:0", "--tls")
    assert up.returncode == 0, up.stderr
    config_path = Path(up.stdout.splitlines()[0])
    config = yaml.safe_load(config_path.read_text())
    tls = state / "tls"
    assert config["tls"]["client_ca_file"] == str(tls / "ca.crt")  # client certificates required
    assert [c["identity"] for c in config["auth"]["callers"]] == [spiffe_id("app"), spiffe_id("operator")]
    assert oct((tls / "operator.key").stat().st_mode & 0o777) == "0o600"
    assert oct((state / "audit-signing.key").stat().st_mode & 0o777) == "0o600"
    config["nodes"] = [n for n in config["nodes"] if n["name"] in ("node-a", "node-b")]
    with socket.socket() as probe:  # a fixed port, so the CLI and the health check find it from the config
        probe.bind(("127.0.0.1", 0))
        config["listen"] = f"127.0.0.1:{probe.getsockname()[1]}"
    config_path.write_text(yaml.safe_dump(config))
    pki = Pki(tls, None)  # type: ignore[arg-type]
    daemon = start_secure(config_path, tmp_path / "daemon.log", pki)
    try:
        operator = ["--ca", str(tls / "ca.crt"), "--cert", str(tls / "operator.crt"),
                    "--key", str(tls / "operator.key")]
        nodes = hsmlb("nodes", "--address", daemon.address, *operator)
        assert nodes.returncode == 0, nodes.stderr
        assert "node-a" in nodes.stdout and "node-b" in nodes.stdout
        app_env = {"HSMLB_CA": str(tls / "ca.crt"), "HSMLB_CERT": str(tls / "app.crt"),
                   "HSMLB_KEY": str(tls / "app.key")}
        denied = hsmlb("nodes", "--address", daemon.address, env=app_env)
        assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr and spiffe_id("app") in denied.stderr
        plain = hsmlb("nodes", "--address", daemon.address)
        assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr
        drill = hsmlb("node", "fail", "node-b", "--address", daemon.address, *operator)
        assert drill.returncode == 0 and f"failed by operator ({spiffe_id('operator')})" in drill.stdout
        assert hsmlb("node", "restore", "node-b", "--address", daemon.address, *operator).returncode == 0
        health = hsmlb("health", "--address", daemon.address, env=app_env)
        assert health.returncode == 0 and "SERVING" in health.stdout
        # as the Docker HEALTHCHECK runs it: the port and "TLS or not" from $HSMLB_CONFIG
        docker = hsmlb("health", "--timeout", "3", env={**app_env, "HSMLB_CONFIG": str(config_path)})
        assert docker.returncode == 0 and "SERVING" in docker.stdout, docker.stderr
        by_config = hsmlb("nodes", "--config", str(config_path), *operator)
        assert by_config.returncode == 0 and "node-a" in by_config.stdout
        assert hsmlb("health", "--address", daemon.address).returncode == 1
    finally:
        assert daemon.stop() == 0
    verify = hsmlb("audit", "verify", str(state / "audit"), "--public-key", str(state / "audit-signing.key.pub"))
    assert verify.returncode == 0, verify.stdout


def test_audit_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "k"
    first = hsmlb("audit", "keygen", "--out", str(key))
    assert first.returncode == 0 and key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert "PRIVATE" not in first.stdout.replace("private key:", "")  # the key itself is never printed
    second = hsmlb("audit", "keygen", "--out", str(key))
    assert second.returncode == 1


@pytest.mark.parametrize("missing", ["signing_key_file", "both"])
def test_audit_config_needs_exactly_one_key_source(missing: str) -> None:
    from hsmlb.config import ConfigError, parse_config

    audit = {"dir": "/tmp/x"} if missing == "both" else {"dir": "/tmp/x", "signing_key_file": "/k",
                                                          "signing_key_env": "K"}
    with pytest.raises(ConfigError, match=r"audit: .*exactly one of signing_key_file or signing_key_env"):
        parse_config({"nodes": [{"name": "a", "module": "/x", "token_label": "a", "pin_env": "P"}], "audit": audit})


@pytest.mark.timeout(240)
@pytest.mark.parametrize("profile", ["burst-async", "burst-stream"])
def test_loadtest_speaks_mtls(cluster: Cluster, tmp_path: Path, profile: str) -> None:
    """The load generators (the SDK's AsyncClient, the own Stream client) with --ca/--cert/--key."""
    import json

    from tests._tls_helpers import make_pki, secure_config

    pki = make_pki(tmp_path / "pki")
    daemon = start_secure(secure_config(cluster, pki, tmp_path / "hsmlb.yaml"), tmp_path / "daemon.log", pki)
    root = Path(__file__).resolve().parents[1]
    try:
        cert, key = pki.client("operator")
        common = ["-m", "loadtest", "stream", "--target", daemon.address, "--profile", profile, "--seconds", "2",
                  "--warmup", "0.5", "--min-tps", "1", "--p99-sym-ms", "5000", "--p99-asym-ms", "5000",
                  "--exclude", "CardValidation,TranslatePin,AuthRequestCryptogram", "--quiet"]
        done = subprocess.run([sys.executable, *common, "--json", str(tmp_path / "tls.json"), "--ca",
                               str(pki.ca_file), "--cert", str(cert), "--key", str(key)],
                              capture_output=True, text=True, timeout=150, cwd=root)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        summary = json.loads((tmp_path / "tls.json").read_text())["summary"]
        assert summary["requests"] > 0 and summary["failures"] == 0
        plain = subprocess.run([sys.executable, *common, "--json", str(tmp_path / "plain.json")],
                               capture_output=True, text=True, timeout=150, cwd=root,
                               env={k: v for k, v in os.environ.items() if not k.startswith("HSMLB_")})
        assert plain.returncode != 0  # without a client certificate the daemon serves nothing
    finally:
        daemon.stop()


def test_config_check_loads_the_security_material(tmp_path: Path) -> None:
    from hsmlb.audit.cli import keygen
    from tests._tls_helpers import make_pki

    pki = make_pki(tmp_path / "pki")
    keygen(tmp_path / "audit.key")
    node = {"name": "a", "module": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "a", "pin_env": "TEST_PIN"}
    config = {"nodes": [node], "listen": "0.0.0.0:50051",
              "tls": {"cert_file": str(pki.dir / "server.crt"), "key_file": str(pki.dir / "server.key"),
                      "client_ca_file": str(pki.ca_file)},
              "auth": {"callers": [{"identity": "spiffe://hsmlb.dev/app", "operations": ["*"], "keys": ["*"]}]},
              "audit": {"dir": str(tmp_path / "audit"), "signing_key_file": str(tmp_path / "audit.key")}}
    path = tmp_path / "hsmlb.yaml"
    path.write_text(yaml.safe_dump(config))
    ok = hsmlb("config", "check", str(path), env={"TEST_PIN": "1234"})
    assert ok.returncode == 0, ok.stderr
    assert "client certificates required (mTLS)" in ok.stdout and "1 caller rules, deny by default" in ok.stdout
    assert "warning:" not in ok.stdout
    config["tls"]["key_file"] = str(pki.dir / "app.key")  # a key that is not the certificate's
    config.pop("tls")["client_ca_file"] = None
    config["audit"]["signing_key_file"] = str(pki.dir / "app.key")  # not an Ed25519 key
    path.write_text(yaml.safe_dump(config))
    bad = hsmlb("config", "check", str(path), env={"TEST_PIN": "1234"})
    assert bad.returncode == 2 and "audit signing key: the audit signing key must be an Ed25519" in bad.stderr
    assert "BEGIN" not in bad.stderr + bad.stdout  # never the key itself
    config["audit"]["signing_key_file"] = str(tmp_path / "audit.key")
    path.write_text(yaml.safe_dump(config))
    open_door = hsmlb("config", "check", str(path), env={"TEST_PIN": "1234"})
    assert "warning: listen 0.0.0.0:50051 is beyond loopback without tls" in open_door.stdout
    config["tls"] = {"cert_file": str(pki.dir / "server.crt"), "key_file": str(pki.dir / "app.key")}
    path.write_text(yaml.safe_dump(config))
    mismatch = hsmlb("config", "check", str(path), env={"TEST_PIN": "1234"})
    assert mismatch.returncode == 2 and "tls: key_file is not the private key of cert_file" in mismatch.stderr

"""The newcomer's and operator's path (issue 10): `./scripts/run-dev` as the README says, the README's
commands in a fresh shell, `hsmlb config check` on the config run-dev wrote (token and region nodes),
`hsmlb call`, reflection v1, and the CLI finding the daemon from any directory."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_reflection.v1alpha import reflection_pb2

from hsmlb.config import ConfigError
from hsmlb.dev.procs import stop as stop_child
from hsmlb.locate import ENV_ADDRESS, ENV_CONFIG, find_address, remember, state_file
from tests._daemon_helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
NIST_ECB = "3AD77BB40D7A3660A89ECAF32466EF97"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fresh_env(home: Path, **extra: str) -> dict[str, str]:
    """A new login shell's environment: no virtualenv on PATH, no HSMLB_* variables, its own HOME."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != VENV_BIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HSMLB_", "VIRTUAL_ENV", "XDG_"))}
    return {**env, "PATH": path, "HOME": str(home), **extra}


@dataclass
class RunDev:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    home: Path
    address: str
    log: Path


@pytest.fixture(scope="module")
def run_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunDev]:
    """`./scripts/run-dev` (README command 1), from the checkout, into this test's own state dir and HOME."""
    base = tmp_path_factory.mktemp("run-dev")
    home, state_dir, log = base / "home", base / "state", base / "run-dev.log"
    home.mkdir()
    port = _free_port()
    env = _fresh_env(home, VIRTUAL_ENV=str(VENV_BIN.parent), PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    with log.open("wb") as out:
        proc = subprocess.Popen([str(ROOT / "scripts" / "run-dev"), "--state-dir", str(state_dir),
                                 "--listen", f"127.0.0.1:{port}"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        up = wait_for(lambda: "hsmlb listening on" in log.read_text(errors="replace") or proc.poll() is not None, 240,
                      step=0.2)
        assert up and proc.poll() is None, log.read_text(errors="replace")[-3000:]
        yield RunDev(proc, state_dir, home, f"127.0.0.1:{port}", log)
    finally:
        stop_child(proc, signal.SIGTERM, 30)


def _readme_shell_block() -> str:
    """The README's commands for 'another shell' (the first sh block after run-dev's description)."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index("In another shell"):]
    return re.search(r"```sh\n(.*?)```", after, re.S)[1]  # type: ignore[index]


def test_readme_commands_work_in_a_fresh_shell(run_dev: RunDev) -> None:
    if not (ROOT / ".venv" / "bin" / "activate").is_file():
        pytest.skip("the project was installed into another virtualenv than the README's .venv")
    block = _readme_shell_block()
    assert block.startswith(". .venv/bin/activate"), block  # the step a newcomer needs is written down
    # The README's commands, literally, from the checkout, in a shell without the virtualenv; the daemon is
    # found through the record run-dev left under $HOME (the checkout's own .hsmlb/dev may not exist).
    env = _fresh_env(run_dev.home)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    if (ROOT / ".hsmlb" / "dev" / "hsmlb.yaml").is_file():  # a developer's own dev config outranks the record
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env={**env, ENV_ADDRESS: run_dev.address})
    assert done.returncode == 0, done.stderr
    assert re.search(r"^node-a\s+healthy", done.stdout, re.M), done.stdout
    assert "alias/zek-aes128" in done.stdout and "Operations/EncryptData" in done.stdout
    assert f'"cipher_text": "{NIST_ECB}"' in done.stdout, done.stdout


def test_cli_finds_the_daemon_from_any_directory(run_dev: RunDev, tmp_path: Path) -> None:
    recorded = yaml.safe_load(state_file_at(run_dev.home).read_text())
    assert recorded["address"] == run_dev.address
    env = _fresh_env(run_dev.home)
    hsmlb = str(VENV_BIN / "hsmlb")
    by_record = subprocess.run([hsmlb, "nodes"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert by_record.returncode == 0 and "node-a" in by_record.stdout, by_record.stderr
    elsewhere = _fresh_env(tmp_path)  # no record: the environment variables name it
    for var, value in ((ENV_ADDRESS, run_dev.address), (ENV_CONFIG, str(run_dev.state_dir / "hsmlb.yaml"))):
        named = subprocess.run([hsmlb, "nodes"], cwd=tmp_path, env={**elsewhere, var: value}, capture_output=True,
                               text=True, timeout=60)
        assert named.returncode == 0 and "node-a" in named.stdout, (var, named.stderr)
    nothing = subprocess.run([hsmlb, "nodes"], cwd=tmp_path, env=elsewhere, capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 2 and ENV_ADDRESS in nothing.stderr and "Traceback" not in nothing.stderr


def state_file_at(home: Path) -> Path:
    return home / ".local" / "state" / "hsmlb" / "dev.json"


def test_config_check_passes_on_the_run_dev_config_and_names_bad_region_fields(run_dev: RunDev,
                                                                             tmp_path: Path) -> None:
    config = run_dev.state_dir / "hsmlb.yaml"
    kinds = [n.get("kind", "pkcs11") for n in yaml.safe_load(config.read_text())["nodes"]]
    assert kinds.count("apc") == 2 and kinds.count("pkcs11") == 4, kinds
    ok = subprocess.run([sys.executable, "-m", "hsmlb", "config", "check", str(config)], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and "OK (6 nodes)" in ok.stdout, ok.stderr
    data = yaml.safe_load(config.read_text())
    region = kinds.index("apc")
    cases = {"region": ("eu-moon", f"nodes.{region}.region"),
             "credentials_file": (str(tmp_path / "missing"), f"nodes.{region}.credentials_file: cannot read"),
             "connections": (0, f"nodes.{region}.connections")}
    for field, (value, expected) in cases.items():
        bad = yaml.safe_load(config.read_text())
        bad["nodes"][region][field] = value
        path = tmp_path / f"bad-{field}.yaml"
        path.write_text(yaml.safe_dump(bad))
        result = subprocess.run([sys.executable, "-m", "hsmlb", "config", "check", str(path)], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2 and expected in result.stderr, (field, result.stderr)
        assert "Traceback" not in result.stderr
    assert data["nodes"][region]["kind"] == "apc"


def test_reflection_v1_and_v1alpha_list_the_services(run_dev: RunDev) -> None:
    with grpc.insecure_channel(run_dev.address) as channel:
        for version in ("v1", "v1alpha"):
            call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                         request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                         response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
            replies = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services=""),
                                      reflection_pb2.ServerReflectionRequest(
                                          file_containing_symbol="hsmlb.v1.Operations")]), timeout=10))
            names = {s.name for s in replies[0].list_services_response.service}
            assert {"hsmlb.v1.Operations", "hsmlb.v1.Admin", "grpc.reflection.v1.ServerReflection"} <= names
            assert replies[1].file_descriptor_response.file_descriptor_proto, version


def test_call_reports_field_violations(run_dev: RunDev) -> None:
    bad = '{"key_identifier":"alias/cvk-1","primary_account_number":"4111","generation_attributes":' \
          '{"card_verification_value2":{"card_expiry_date":"1299"}}}'
    result = subprocess.run([str(VENV_BIN / "hsmlb"), "call", "--address", run_dev.address,
                             "GenerateCardValidationData", bad], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result
    assert "INVALID_ARGUMENT: primary_account_number (APC PrimaryAccountNumber): " in result.stderr, result.stderr
    assert "  field primary_account_number: " in result.stderr
    unknown = subprocess.run([str(VENV_BIN / "hsmlb"), "call", "--address", run_dev.address, "EncryptData",
                              '{"plaintext": "00"}'], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "plaintext" in unknown.stderr and "Traceback" not in unknown.stderr


# ------------------------------------------------------------------ address discovery, without a daemon
def test_find_address_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for var in (ENV_ADDRESS, ENV_CONFIG):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    with pytest.raises(ConfigError, match=ENV_ADDRESS):
        find_address()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"listen": "0.0.0.0:50999", "nodes": [
        {"name": "a", "module": "/x.so", "token_label": "a", "pin_env": "X"}]}))
    remember(config, "0.0.0.0:50999")
    assert state_file().is_file()
    assert find_address() == "127.0.0.1:50999"  # the record; a wildcard listen is dialled on loopback
    monkeypatch.setenv(ENV_CONFIG, str(config))
    config.write_text(config.read_text().replace("50999", "50998"))
    assert find_address() == "127.0.0.1:50998"
    monkeypatch.setenv(ENV_ADDRESS, "127.0.0.1:7")
    assert find_address() == "127.0.0.1:7"
    assert find_address("127.0.0.1:8") == "127.0.0.1:8"
    remember(config, "127.0.0.1:0")  # a port chosen at start is not recorded
    assert "50999" in state_file().read_text()

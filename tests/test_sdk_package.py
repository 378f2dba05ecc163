"""The hsmlb-client distribution: it installs into a fresh virtualenv without any server dependency, ships its
.proto, runs the README's five-line program against a real daemon, coexists with the daemon's own stubs in one
process, and batches under gevent monkey-patching (as Locust runs it) and with plain threads."""

from __future__ import annotations

import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests._daemon_helpers import NIST_ECB
from tests.conftest import DaemonProcess

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients" / "python"
SERVER_ONLY = ("boto3", "botocore", "python-pkcs11", "aiohttp", "pydantic", "hsmlb", "uvloop", "pyyaml",
               "opentelemetry-sdk", "cryptography")
INSTALL_TIMEOUT_S = 600


def _readme_programs() -> list[str]:
    """The README's Python blocks; the first is the five-line program a service developer starts from."""
    programs = re.findall(r"```python\n(.*?)```", (CLIENT / "README.md").read_text(), re.S)
    assert programs, "clients/python/README.md has no python example"
    return programs


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with `pip install ./clients/python` and nothing else (the index is a local mirror)."""
    where = tmp_path_factory.mktemp("client-venv") / "venv"
    venv.create(where, with_pip=True)
    python = where / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(CLIENT)],
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return python


def test_the_client_installs_without_server_dependencies_and_ships_its_proto(client_venv: Path) -> None:
    listed = subprocess.run([str(client_venv), "-m", "pip", "list", "--format=freeze"], capture_output=True,
                            text=True, timeout=60, check=True).stdout
    installed = {line.split("==")[0].lower().replace("_", "-") for line in listed.splitlines() if "==" in line}
    assert "hsmlb-client" in installed and {"grpcio", "protobuf"} <= installed
    assert not installed & set(SERVER_ONLY), installed & set(SERVER_ONLY)
    assert installed <= {"hsmlb-client", "grpcio", "protobuf", "typing-extensions", "pip", "setuptools"}, installed
    probe = ("import importlib.resources as r, hsmlb_client; "
             "print(r.files('hsmlb_client').joinpath('proto/hsmlb/v1/hsmlb.proto').read_text())")
    shipped = subprocess.run([str(client_venv), "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert shipped.stdout.rstrip("\n") == (ROOT / "proto" / "hsmlb" / "v1" / "hsmlb.proto").read_text().rstrip("\n")


def test_the_readme_program_encrypts_through_a_running_daemon(client_venv: Path, daemon: DaemonProcess) -> None:
    program = _readme_programs()[0].replace("127.0.0.1:50051", daemon.address)
    assert len(program.strip().splitlines()) <= 5
    done = subprocess.run([str(client_venv), "-c", program], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert NIST_ECB in done.stdout


def test_every_readme_example_runs_against_the_dev_cluster(client_venv: Path, daemon: DaemonProcess) -> None:
    """Each operation family's example (its asserts hold known answers) runs in the client-only venv."""
    for program in _readme_programs()[1:]:
        done = subprocess.run([str(client_venv), "-c", program.replace("127.0.0.1:50051", daemon.address)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"{program}\n{done.stderr[-2000:]}"


@pytest.mark.parametrize("first", ["hsmlb.v1.hsmlb_pb2", "hsmlb_client"])
def test_the_client_and_the_daemons_stubs_share_one_process(first: str) -> None:
    """The client keeps its descriptors in a pool of its own, so it imports beside the daemon's stubs in either
    order (even when their protos differ); the daemon's messages are accepted, converted by their bytes."""
    second = "hsmlb_client" if first != "hsmlb_client" else "hsmlb.v1.hsmlb_pb2"
    code = (f"import {first}, {second}\n"
            "from hsmlb.v1 import hsmlb_pb2 as server\n"
            "from hsmlb_client._operations import build_request\n"
            "r = build_request('encrypt_data', server.EncryptDataRequest(key_identifier='alias/k'), {})\n"
            "print(r.key_identifier, type(r).__module__, type(r) is not server.EncryptDataRequest)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["alias/k", "hsmlb_client.v1.hsmlb_pb2", "True"]  # its own classes, converted


GEVENT_USERS = """
from gevent import monkey
monkey.patch_all()
import sys
import gevent
import hsmlb_client
client = hsmlb_client.Client(sys.argv[1])
out = []
def user():
    for _ in range(10):
        out.append(client.encrypt_data(key_identifier="alias/zek-aes128",
                                       plain_text="6BC1BEE22E409F96E93D7E117393172A",
                                       encryption_attributes={"symmetric": {"mode": "ECB"}}).cipher_text)
gevent.joinall([gevent.spawn(user) for _ in range(50)], timeout=60)
try:
    client.encrypt_data(key_identifier="alias/no-such-key", plain_text="00" * 16,
                        encryption_attributes={"symmetric": {"mode": "ECB"}})
except hsmlb_client.NotFound as error:
    print("NotFound", error.code.name)
print(len(out), ",".join(sorted(set(out))), client.batches, client.operations)
client.close()
"""


def test_the_sync_client_batches_under_gevent(daemon: DaemonProcess) -> None:
    """50 greenlets (Locust users) x 10 calls: every answer right, carried by far fewer Batch calls."""
    done = subprocess.run([sys.executable, "-c", GEVENT_USERS, daemon.address], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    typed, counts = done.stdout.splitlines()
    assert typed == "NotFound NOT_FOUND"  # an item's status reaches the caller as a typed error
    count, answers, batches, operations = counts.split()
    assert (int(count), answers, int(operations)) == (500, NIST_ECB, 501)
    assert int(batches) < 500 // 5, f"{batches} batches for 500 operations"

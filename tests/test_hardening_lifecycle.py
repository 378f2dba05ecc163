"""Issue 10, lifecycle: bounded stops, no process outlives the daemon (SIGKILL included), the port
checked before any node starts, one clear line for a busy port or a full disk, a daemon that
survives an unwritable stdout, and no PIN on a command line or in any output.

HSMLB_LIFECYCLE_CYCLES=20 runs acceptance 1's twenty start/traffic/SIGTERM cycles (default 3);
with `pytest -s` each cycle's stop time is printed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsmlb.v1 import hsmlb_pb2 as pb
from tests._daemon_helpers import NIST_ECB, nist_request, still_serves, wait_for
from tests._process_helpers import cmdline, free_port, hsmlb, session_pids, wait_gone
from tests.conftest import Cluster, start_daemon

GRACE_S = 5.0  # the dev config's shutdown_grace_s (the default)
CYCLES = int(os.environ.get("HSMLB_LIFECYCLE_CYCLES", "3"))


def _light_traffic(address: str) -> None:
    import grpc

    from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        ops = pb_grpc.OperationsStub(channel)
        calls = [ops.EncryptData.future(nist_request(), timeout=10) for _ in range(20)]
        assert [c.result().cipher_text for c in calls] == [NIST_ECB] * 20
        replies = list(ops.Stream(iter(pb.StreamRequest(request_id=i, timeout_ms=5000, encrypt_data=nist_request())
                                       for i in range(50)), timeout=10))
        assert len(replies) == 50 and all(r.encrypt_data.cipher_text == NIST_ECB for r in replies)


def test_sigterm_cycles_exit_in_time_and_leave_no_process(cluster: Cluster, tmp_path: Path) -> None:
    """Acceptance 1 (first half): start -> light traffic -> SIGTERM, CYCLES times."""
    stop_times = []
    for cycle in range(CYCLES):
        daemon = start_daemon(cluster.config, tmp_path / f"daemon-{cycle}.log", new_session=True)
        try:
            assert len(session_pids(daemon.proc.pid)) >= 5  # the daemon and its four token workers
            _light_traffic(daemon.address)
            started = time.monotonic()
            daemon.proc.send_signal(signal.SIGTERM)
            code = daemon.proc.wait(GRACE_S + 2)
            stop_times.append(time.monotonic() - started)
            assert code == 0, daemon.log_text()[-2000:]
            assert not wait_gone(daemon.proc.pid, 2), "processes of the daemon outlived it"
            assert "stopped" in daemon.log_text()
        finally:
            daemon.stop(signal.SIGKILL, 10)
    print(f"\n{CYCLES} SIGTERM cycles: stop took {min(stop_times):.2f}-{max(stop_times):.2f}s "
          f"(median {sorted(stop_times)[len(stop_times) // 2]:.2f}s), grace {GRACE_S:g}s")


@pytest.fixture
def dev_state(cluster: Cluster, tmp_path: Path) -> Path:
    """A copy of the session cluster's state dir: `dev up` on it finds every token and key in place."""
    state = tmp_path / "state"
    shutil.copytree(cluster.state_dir, state, ignore=shutil.ignore_patterns("*.yaml", "*.log"))
    return state


def _dev_serve(state: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`hsmlb dev up --serve` (tokens and two emulated regions) in a session of its own; its address."""
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "hsmlb", "dev", "up", "--serve", "--state-dir", str(state),
                                 "--listen", "127.0.0.1:0", "--fault-injection"], stdout=subprocess.PIPE, stderr=err,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if line.startswith("hsmlb listening on "):
            return proc, line.split()[-1]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"dev up --serve did not start:\n{log.read_text()[-3000:]}")


def _kinds(pids: set[int]) -> dict[str, set[int]]:
    lines = {pid: cmdline(pid) for pid in pids}
    return {"workers": {p for p, c in lines.items() if "pkcs11_worker" in c},
            "regions": {p for p, c in lines.items() if "apc-emulator" in c}}


def test_sigkill_leaves_no_orphans_and_a_restart_starts_afresh(dev_state: Path, tmp_path: Path) -> None:
    """Acceptance 1 (second half): SIGKILL of the daemon (dev up --serve, with regions): its emulated
    regions and token workers are gone within 5 s; a restart serves with processes of its own."""
    import grpc

    proc, address = _dev_serve(dev_state, tmp_path / "first.log")
    try:
        first = _kinds(session_pids(proc.pid))
        assert len(first["workers"]) == 4 and len(first["regions"]) == 2, first
        _light_traffic(address)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        left = wait_gone(proc.pid, 5)
        assert not left, f"outlived a SIGKILLed daemon: {[cmdline(p) for p in left]}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if session_pids(proc.pid) else None
    again, address = _dev_serve(dev_state, tmp_path / "second.log")
    try:
        second = _kinds(session_pids(again.pid))
        assert len(second["workers"]) == 4 and len(second["regions"]) == 2, second
        assert not (second["workers"] | second["regions"]) & (first["workers"] | first["regions"])
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            still_serves(channel)
        again.send_signal(signal.SIGTERM)
        assert again.wait(GRACE_S + 10) == 0
        assert not wait_gone(again.pid, 5)
    finally:
        if again.poll() is None:
            os.killpg(again.pid, signal.SIGKILL)


def test_busy_port_is_one_line_before_any_node_starts(cluster: Cluster, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = cluster.write_variant(tmp_path / "busy.yaml", listen=f"127.0.0.1:{port}")
        started = time.monotonic()
        result = hsmlb("--log-level", "DEBUG", "serve", "--config", str(config), timeout=60)
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"hsmlb: cannot listen on 127.0.0.1:{port}: address already in use "
                                                  "(another daemon?)"], result.stderr
    assert "Traceback" not in result.stdout and not result.stdout.strip()
    print(f"\nbusy port refused in {elapsed:.2f}s")


def test_start_survives_an_unwritable_stdout(cluster: Cluster, tmp_path: Path) -> None:
    """stdout on a full device (/dev/full): the listening line goes to the log and the daemon serves."""
    import grpc

    port = free_port()
    config = cluster.write_variant(tmp_path / "full.yaml", listen=f"127.0.0.1:{port}")
    log = tmp_path / "daemon.log"
    with open("/dev/full", "wb") as full, log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "hsmlb", "serve", "--config", str(config)], stdout=full,
                                stderr=err, start_new_session=True)
    try:
        assert wait_for(lambda: "stdout not writable" in log.read_text() or proc.poll() is not None, 60)
        assert proc.poll() is None, log.read_text()[-3000:]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            still_serves(channel)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(GRACE_S + 5) == 0
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 160 KiB tmpfs: room for the PIN files and a token or two, not for the dev cluster."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _recording_softhsm2_util(bin_dir: Path, record: Path) -> dict[str, str]:
    """A softhsm2-util first on PATH that appends its command line to `record` and runs the real one."""
    real = shutil.which("softhsm2-util")
    if real is None:
        pytest.skip("softhsm2-util is not installed")
    bin_dir.mkdir()
    wrapper = bin_dir / "softhsm2-util"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {record}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_dev_up_on_a_full_disk_is_one_line_and_no_pin_anywhere(tiny_disk: Path, tmp_path: Path) -> None:
    record = tmp_path / "argv.txt"
    env = _recording_softhsm2_util(tmp_path / "bin", record)
    state = tiny_disk / "state"
    result = hsmlb("dev", "up", "--state-dir", str(state), env=env, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output and "Error" not in output.replace("ERROR", ""), output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hsmlb: "), output
    assert "no space left on device" in lines[0].lower() or "softhsm2-util" in lines[0], output
    pins = [p.read_text().strip() for p in (state / "so.pin", state / "user.pin") if p.exists()]
    assert pins, "the PIN files were not written: the test proves nothing about PINs"
    argv = record.read_text() if record.exists() else ""
    assert "--init-token" in argv, "softhsm2-util was never asked to create a token"
    for pin in pins:
        assert pin not in output and pin not in argv
    print(f"\nfull disk: {lines[0]}")


def test_dev_up_puts_no_pin_on_a_command_line(tmp_path: Path) -> None:
    """A fresh `dev up`: the tokens are created with the PINs typed on a terminal, not in argv."""
    record = tmp_path / "argv.txt"
    env = _recording_softhsm2_util(tmp_path / "bin", record)
    state = tmp_path / "state"
    result = hsmlb("dev", "up", "--state-dir", str(state), "--listen", "127.0.0.1:0", env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    argv = record.read_text()
    assert argv.count("--init-token") == 4
    for pin in ((state / "so.pin").read_text().strip(), (state / "user.pin").read_text().strip()):
        assert pin not in argv and pin not in result.stdout + result.stderr


def test_unwritable_state_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = hsmlb("dev", "up", "--state-dir", str(blocker / "state"), timeout=60)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot write the state dir" in result.stderr, \
        result.stderr

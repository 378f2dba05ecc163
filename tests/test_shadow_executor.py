"""The shadow executor: shadow calls to a region performed in a child process, against a real emulated
region on loopback (`hsmlb apc-emulator`); results checked against `cryptography`'s own AES."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hsmlb.errors import HsmlbError, Unavailable
from hsmlb.ops import OpKind
from hsmlb.shadow.executor import ExecutorUnavailable, ShadowExecutor
from tests.test_apc_backend import aws_env, emulator, local_encrypt, native, region_config  # noqa: F401

PLAIN = bytes.fromhex("6BC1BEE22E409F96E93D7E117393172A")  # NIST SP 800-38A F.1.1's first block
ALIAS = "alias/zek-aes128"


def _encrypt(executor: ShadowExecutor) -> asyncio.Future[tuple[bytes, float]]:
    return executor.perform("apc-test", native(OpKind.ENCRYPT, ALIAS, "ECB", b"", PLAIN,
                                                deadline=time.monotonic() + 5))


async def _until(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def test_the_child_performs_a_regions_calls_and_is_respawned_when_killed(emulator, aws_env: Path) -> None:  # noqa: F811
    executor = ShadowExecutor([region_config(emulator.endpoint_url, aws_env / "good")], nice=0)
    assert executor.serves("apc-test") and not executor.serves("node-a")
    with pytest.raises(Unavailable):  # not started: refused at once, never queued
        _encrypt(executor)
    await executor.start()
    try:
        assert executor.up
        expected = local_encrypt(ALIAS, "ECB", b"", PLAIN)
        results = await asyncio.gather(*(_encrypt(executor) for _ in range(20)))  # one frame, one turn
        assert [result for result, _ in results] == [expected] * 20
        assert all(0 < seconds < 5 for _, seconds in results)  # each call's own time in the child
        unknown = executor.perform("apc-nowhere", native(OpKind.ENCRYPT, ALIAS, "ECB", b"", PLAIN))
        with pytest.raises(HsmlbError, match="no such region"):
            await unknown

        pid = executor._proc.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)
        await _until(lambda: not executor.up)
        assert not executor.up
        await _until(lambda: executor.up and executor.restarts == 1)
        assert executor.restarts == 1 and executor._proc.pid != pid  # type: ignore[union-attr]
        assert (await _encrypt(executor))[0] == expected
    finally:
        await executor.close()
    assert executor._proc.returncode is not None  # type: ignore[union-attr]
    with pytest.raises(Unavailable):
        _encrypt(executor)


async def test_a_hung_child_fails_its_calls_past_their_deadline(emulator, aws_env: Path) -> None:  # noqa: F811
    """A stopped (SIGSTOP) child answers nothing: its calls fail about LATE_S after their deadline, so
    shadow slots are not held for ever; a child that stays hung is killed and respawned. (Its niceness
    and CPUs are the config's.)"""
    cpu = min(os.sched_getaffinity(0))
    executor = ShadowExecutor([region_config(emulator.endpoint_url, aws_env / "good")], nice=3, cpus=[cpu])
    await executor.start()
    pid = executor._proc.pid  # type: ignore[union-attr]
    try:  # the operator's placement: below the primary's priority, on the CPUs given
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 3)
        assert os.sched_getaffinity(pid) == {cpu}
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        call = executor.perform("apc-test", native(OpKind.ENCRYPT, ALIAS, "ECB", b"", PLAIN,
                                                   deadline=time.monotonic() + 0.2))
        with pytest.raises(ExecutorUnavailable, match="did not answer in time"):  # skipped, not a candidate error
            async with asyncio.timeout(10):
                await call
        assert time.monotonic() - started < 5
        deadline = time.monotonic() + 15  # still hung, sweep after sweep: killed and respawned
        while executor.restarts == 0 and time.monotonic() < deadline:
            if executor.up:
                with contextlib.suppress(HsmlbError):
                    executor.perform("apc-test", native(OpKind.ENCRYPT, ALIAS, "ECB", b"", PLAIN,
                                                        deadline=time.monotonic() + 0.1))
            await asyncio.sleep(0.2)
        assert executor.restarts == 1 and executor._proc.pid != pid  # type: ignore[union-attr]
        await _until(lambda: executor.up)
        assert (await _encrypt(executor))[0] == local_encrypt(ALIAS, "ECB", b"", PLAIN)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        await executor.close()


@pytest.mark.parametrize("executor", [True, False])
def test_a_daemons_shadow_calls_to_regions_run_in_the_executor(strict_payment_cluster, tmp_path: Path,
                                                               executor: bool) -> None:
    """With the executor (the default) the daemon's own region nodes perform none of the shadow calls,
    and every one is compared all the same; without it, they perform every one (the A/B the bench measures)."""
    from tests._shadow_helpers import REGIONS, failed, ops_ok, report, shadow_config, stream, symmetric_and_payment_mix
    from tests.conftest import start_daemon

    mix = symmetric_and_payment_mix()
    config = shadow_config(strict_payment_cluster, f"executor-{executor}-{tmp_path.name}", executor=executor)
    daemon = start_daemon(config, tmp_path / "d.log")
    try:
        with daemon.channel() as channel:
            assert failed(stream(channel, mix * 3)) == []
            by_op = report(channel)
            served = ops_ok(channel)
    finally:
        daemon.stop()
    compared = sum(r.matches + r.not_comparable for r in by_op.values())
    assert sum(r.discrepancies + sum(r.candidate_errors_by_status.values()) for r in by_op.values()) == 0
    assert compared == len(mix) * 3
    by_regions = sum(served[name] for name in REGIONS)
    assert by_regions == (0 if executor else compared), served


async def test_the_childs_log_lines_are_json_when_the_daemons_are(emulator, aws_env: Path,  # noqa: F811
                                                                   capfd: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The child writes to the daemon's stderr; under `--log-format json` (passed in its environment) its lines
    are JSON objects naming it, not bare text. Here: the CPUs it is told to use do not exist."""
    import json

    from hsmlb.telemetry.logs import FORMAT_ENV

    monkeypatch.setenv(FORMAT_ENV, "json")
    executor = ShadowExecutor([region_config(emulator.endpoint_url, aws_env / "good")], nice=0, cpus=[4095])
    await executor.start()
    try:
        assert executor.up  # on any CPU
        assert (await _encrypt(executor))[0] == local_encrypt(ALIAS, "ECB", b"", PLAIN)
    finally:
        await executor.close()
    lines = [line for line in capfd.readouterr().err.splitlines() if "cpus" in line]
    assert lines and all(line.startswith("{") for line in lines), lines
    entry = json.loads(lines[0])
    assert entry["process"] == "shadow-executor" and entry["level"] == "WARNING" and "refused" in entry["message"]

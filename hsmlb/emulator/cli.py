"""`hsmlb apc-emulator` command line: flags, start-up line, graceful SIGTERM.

Why the exact start-up line: tests and `hsmlb dev up` start the emulator with `--port 0` and read
`apc-emulator listening on http://HOST:PORT region REGION` from stdout to learn the bound port.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from hsmlb.dev.procs import die_with_parent

log = logging.getLogger("hsmlb.emulator")
SHUTDOWN_S = 5.0  # in-flight requests get this long after SIGTERM (a second signal cuts it short)
CANCEL_S = 0.25  # then aiohttp's shutdown cancels what is left, in at most twice this
LOOPBACK = ("127.0.0.1", "::1", "localhost")
READY_LINE = "apc-emulator listening on "  # the start-up line's fixed prefix, printed and parsed only here


def ready_line(url: str, region: str) -> str:
    """The start-up line: `apc-emulator listening on URL region REGION`."""
    return f"{READY_LINE}{url} region {region}"


def parse_ready_line(line: str) -> tuple[str, str] | None:
    """(url, region) from a start-up line; None for any other line (log output shares the stream)."""
    words = line.split()
    if not line.startswith(READY_LINE) or len(words) != 6 or words[4] != "region":
        return None
    return words[3], words[5]


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--port", type=int, required=True, help="TCP port; 0 picks a free one")
    parser.add_argument("--keys", required=True, help="keys file (same format as hsmlb/dev/dev-keys.yaml)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--access-key-id", default=None, help="default: $AWS_ACCESS_KEY_ID")
    parser.add_argument("--secret-access-key", default=None, help="default: $AWS_SECRET_ACCESS_KEY")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every APC request")
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction answered InternalServerException")
    parser.add_argument("--throttle-rate", type=float, default=0.0, help="fraction answered ThrottlingException")
    parser.add_argument("--fault-injection", action="store_true",
                        help="enable POST /_emulator/faults and GET /_emulator/stats (tests only)")
    parser.set_defaults(func=cmd_apc_emulator)
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `apc-emulator` on the `hsmlb` command's subparsers."""
    return configure(subparsers.add_parser("apc-emulator", help="AWS Payment Cryptography emulator (tests, dev)"))


def cmd_apc_emulator(args: argparse.Namespace) -> int:
    from hsmlb.config import ConfigError
    from hsmlb.emulator.faults import FaultConfig
    from hsmlb.emulator.server import EmulatorConfig

    access = args.access_key_id or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = args.secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        print("hsmlb apc-emulator: credentials required: --access-key-id/--secret-access-key or "
              "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY", file=sys.stderr)
        return 2
    try:
        faults = FaultConfig(args.latency_ms, args.error_rate, args.throttle_rate).validated()
    except ValueError as exc:
        print(f"hsmlb apc-emulator: {exc}", file=sys.stderr)
        return 2
    config = EmulatorConfig(args.keys, args.region, access, secret, faults, args.fault_injection)
    try:
        _run(_serve(config, args.host, args.port))
    except ConfigError as exc:
        print(f"hsmlb apc-emulator: config error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


async def _serve(config: Any, host: str, port: int) -> None:
    from aiohttp import web

    from hsmlb.emulator.server import Emulator

    emulator = Emulator(config)
    if host not in LOOPBACK:
        log.warning("serving clear test keys on non-loopback address %s", host)
    # access_log=None: no per-request lines (paths can carry aliases; bodies are never logged)
    # shutdown_timeout: aiohttp waits it twice (for handlers, then for their cancellation), so the
    # drain is ours (_drain, bounded by SHUTDOWN_S) and aiohttp only cancels the stragglers.
    runner = web.AppRunner(emulator.app(), access_log=None, handle_signals=False, shutdown_timeout=CANCEL_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:  # the first drains, the second stops now
        (force if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    if emulator.keys.skipped:
        log.info("skipped asymmetric keys (no APC data-plane use): %s", ", ".join(emulator.keys.skipped))
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(ready_line(f"http://{shown}:{bound_port}", config.region), flush=True)
    try:
        await stop.wait()
    finally:
        log.info("apc-emulator stopping")
        await _drain(runner, emulator, force)
        await runner.cleanup()


async def _drain(runner: Any, emulator: Any, force: asyncio.Event) -> None:
    """Stop accepting, close idle keep-alive connections, and give in-flight requests SHUTDOWN_S."""
    for site in runner.sites:
        await site.stop()
    if runner.server is not None:
        runner.server.pre_shutdown()  # connections close once their current answer is sent
    waiters = {asyncio.ensure_future(emulator.drained()), asyncio.ensure_future(force.wait())}
    try:
        await asyncio.wait(waiters, timeout=SHUTDOWN_S, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = configure(argparse.ArgumentParser(prog="hsmlb apc-emulator", description=__doc__))
    parser.add_argument("--log-level", default=os.environ.get("HSMLB_LOG_LEVEL", "INFO"))
    die_with_parent()  # started by a daemon or a test: go when it goes
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    return int(args.func(args))

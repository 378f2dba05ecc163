"""The status page in a real headless browser (Debian's chromium + chromium-driver, driven by selenium).

Against a real daemon on the dev cluster: every node is listed, a drill (Admin SetNodeState FAIL)
shows on the page within 3 s without a reload, the page fetched nothing from anywhere else, and a
screenshot is kept as a test artefact (in the test's tmp dir, and in $HSMLB_ARTIFACTS when set).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._routing_helpers import NODES, WHO, encrypt_request
from tests._telemetry_helpers import telemetry_daemon
from tests.conftest import Cluster

SHOWN_WITHIN_S = 3.0
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[object]:
    assert CHROMIUM and CHROMEDRIVER, "chromium and chromium-driver are needed (scripts/_install.sh installs them)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1680,1400", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _traffic(address: str, stop: threading.Event) -> None:
    import grpc

    with grpc.insecure_channel(address) as channel:
        ops = pb_grpc.OperationsStub(channel)
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            ops.EncryptData(encrypt_request(), timeout=10)
            time.sleep(0.005)


def _rows(driver: object) -> dict[str, str]:
    """node -> its row's state, read in one script: the page re-renders its tables on every refresh, so an
    element found in one call may be gone by the next (a stale reference)."""
    return dict(driver.execute_script(  # type: ignore[attr-defined]
        "return Array.from(document.querySelectorAll('tr[data-node]')).map(r => [r.dataset.node, r.dataset.state])"))


def _text(driver: object, element_id: str) -> str:
    return str(driver.execute_script(  # type: ignore[attr-defined]
        "const e = document.getElementById(arguments[0]); return e ? e.textContent : ''", element_id))


def test_status_page_lists_nodes_and_shows_a_drill(cluster: Cluster, tmp_path: Path, browser: object) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    with telemetry_daemon(cluster, tmp_path) as (daemon, url), daemon.channel() as channel:
        stop = threading.Event()
        load = threading.Thread(target=_traffic, args=(daemon.address, stop), daemon=True)
        load.start()
        try:
            driver.get(url)  # type: ignore[attr-defined]
            WebDriverWait(driver, 20).until(lambda d: len(_rows(d)) == len(NODES))
            assert list(_rows(driver)) == list(NODES)
            assert all(state.startswith("healthy") for state in _rows(driver).values())
            WebDriverWait(driver, 20).until(lambda d: "SoftHSM" in _text(d, "hardware"))

            admin = pb_grpc.AdminStub(channel)
            admin.SetNodeState(pb.SetNodeStateRequest(node="node-b", action=pb.FAIL, requested_by=WHO), timeout=5)
            drilled = time.monotonic()
            WebDriverWait(driver, 10, poll_frequency=0.05).until(
                lambda d: _rows(d).get("node-b", "").startswith("failed"))
            shown_after = time.monotonic() - drilled
            print(f"drill shown on the page {shown_after:.2f}s after SetNodeState returned")
            assert shown_after <= SHOWN_WITHIN_S
            WebDriverWait(driver, 10).until(lambda d: WHO in _text(d, "drills"))
            time.sleep(4)  # a few chart points with traffic in them, for the screenshot
            assert _text(driver, "v-tps") not in ("", "\u2013")
            # self-contained: every resource the page loaded came from the daemon's listener
            resources = driver.execute_script(  # type: ignore[attr-defined]
                "return performance.getEntriesByType('resource').map(e => e.name)")
            assert resources and all(r.startswith(url) for r in resources), resources
            shot = tmp_path / "status-page.png"
            assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000  # type: ignore[attr-defined]
            artifacts = os.environ.get("HSMLB_ARTIFACTS")
            if artifacts:
                Path(artifacts).mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, Path(artifacts) / shot.name)
            print(f"screenshot: {shot}")
            admin.SetNodeState(pb.SetNodeStateRequest(node="node-b", action=pb.RESTORE, requested_by=WHO), timeout=5)
        finally:
            stop.set()
            load.join(timeout=15)

"""The Prefect UI in a real headless Chromium: a partition run's page shows its name, tags and artifacts.

The UI renders client-side, so the test drives Chromium over the DevTools protocol (the `websockets`
package Prefect already depends on): open the flow run page, wait for the name, click the Artifacts
tab, wait for the artifacts, and save a screenshot of each under the test's tmp dir.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from .prefect_server import ensure_partition_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# offline headless flags: without the background-networking ones Chromium floods the closed network
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    "--remote-debugging-port=0",
]


class Page:
    """The few DevTools-protocol calls the test needs, over one websocket."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=20)
        self.ids = itertools.count(1)

    def call(self, method: str, **params: object) -> dict:
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expr: str) -> object:
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

    def wait_text(self, *needles: str, timeout: float = 60.0) -> str:
        """The page's visible text once it contains every needle."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.js("document.body ? document.body.innerText : ''") or ""
            if all(n in text for n in needles):
                return text
            time.sleep(0.5)
        raise AssertionError(f"page never showed {needles}; it shows:\n{text[:3000]}")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))


@contextlib.contextmanager
def chromium(profile: Path):
    """Headless Chromium with a fresh profile; yields a Page on its first tab; always stopped."""
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            tab = next(t for t in json.loads(r.read()) if t["type"] == "page")
        page = Page(tab["webSocketDebuggerUrl"])
        try:
            yield page
        finally:
            page.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.server
@pytest.mark.slow
def test_flow_run_page_shows_partition_name_and_artifacts(prefect_stack, tmp_path, tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    fr = ensure_partition_run(prefect_stack, tmp_path_factory)
    assert fr.state.is_completed(), prefect_stack.log_tail("worker")
    with chromium(tmp_path / "profile") as page:
        page.call("Page.enable")
        page.call("Page.navigate", url=f"{prefect_stack.url}/runs/flow-run/{fr.id}")
        # name, state, tags (date, tasks), deployment and work pool: all rendered client-side, so wait for them
        page.wait_text(
            "corpus-2026-11-01", "Completed", "date:2026-11-01", "processor:lid", "partition", "xlmflow"
        )
        page.screenshot(tmp_path / "flow-run.png")

        assert page.js(
            "(() => { const t = document.getElementById('artifacts'); t && t.click(); return !!t })()"
        )
        text = page.wait_text(  # keys and descriptions render at different times: wait for both
            "corpus-2026-11-01-summary",
            "corpus-2026-11-01-report",
            "corpus-2026-11-01-progress",
            "counts for partition 2026-11-01",
        )
        page.js("document.getElementById('artifacts-content')?.scrollIntoView()")
        time.sleep(1)
        page.screenshot(tmp_path / "artifacts.png")
    (tmp_path / "artifacts.txt").write_text(text)
    assert "counts for partition 2026-11-01" in text  # the table artifact's description
    assert "Flow run\nNone" not in text  # listed under the flow run itself, not only under task runs
    assert (tmp_path / "artifacts.png").stat().st_size > 10_000
    print(f"screenshots: {tmp_path / 'flow-run.png'} {tmp_path / 'artifacts.png'}")

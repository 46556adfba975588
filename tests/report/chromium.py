"""A minimal headless Chromium driver over the DevTools protocol (websocket-client).

Starts the system's Chromium (never downloads one) with a throw-away profile, no network
services, and a debugging port chosen by Chromium; records console messages, log entries
and uncaught exceptions while a page loads.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--remote-debugging-port=0",
)
START_TIMEOUT_S = 60.0


def chromium_or_skip() -> str:
    """The Chromium executable; fails the test in CI (env CI set), skips it locally."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    reason = "no Chromium found (install Debian's chromium: apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {reason}")
    print(f"skipping the browser test: {reason}")
    pytest.skip(reason)


class Browser:
    """One headless Chromium with one page, driven over its DevTools websocket."""

    def __init__(self, executable: str, profile: Path) -> None:
        import websocket

        profile.mkdir(parents=True, exist_ok=True)
        marker = profile / "DevToolsActivePort"
        marker.unlink(missing_ok=True)  # a reused profile keeps the last run's port
        self.process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port = self._port(marker)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = json.load(resp)
            page = next(t for t in targets if t.get("type") == "page")
            self.ws = websocket.create_connection(
                page["webSocketDebuggerUrl"], suppress_origin=True, timeout=START_TIMEOUT_S
            )
        except BaseException:
            self.close()
            raise
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _port(self, marker: Path) -> int:
        waited = 0.0
        while not (marker.is_file() and marker.read_text().strip()):
            if self.process.poll() is not None or waited > START_TIMEOUT_S:
                raise RuntimeError(f"Chromium did not start (exit {self.process.returncode})")
            time.sleep(0.1)
            waited += 0.1
        return int(marker.read_text().splitlines()[0])

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events met meanwhile are kept)."""
        self._next_id += 1
        self.ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(json.loads(self.ws.recv()))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, error log entries and uncaught exceptions since the last open."""
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(f"console: {[a.get('value') for a in params.get('args', [])]}")
            elif method == "Runtime.exceptionThrown":
                out.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                out.append(f"log: {params['entry'].get('text')}")
        return out

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

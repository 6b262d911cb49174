"""The MLflow UI as people use it: `mlflow ui` on 127.0.0.1 and headless Chromium (Selenium, the system browser).

Shared by tests/test_ui.py and docs/make_ui_screenshots.py. Needs Debian's chromium and
chromium-driver (`.ci/run` installs them) and the `selenium` package; `available()` says why not.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHROMIUM = os.environ.get("PGEN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PGEN_CHROMEDRIVER", "/usr/bin/chromedriver")


def available() -> str | None:
    """None when a browser test can run, else the reason it cannot."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} not found (Debian packages chromium and chromium-driver; .ci/run installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow ui`` / ``mlflow server`` over a store on 127.0.0.1 (job execution off), started and
    stopped at will (a test can take it away mid-run and bring it back on the same port).

    ``serve_artifacts=False``: ``mlflow ui`` over a local artifact folder clients write to directly;
    ``True``: ``mlflow server`` as a lab runs it, clients upload and download artifacts through it
    (``mlflow-artifacts:``), the folder being the server's own."""

    def __init__(self, backend_uri: str, artifacts: str | os.PathLike, *, serve_artifacts: bool = False, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        artifacts = Path(artifacts).resolve()
        if serve_artifacts:
            where = ["server", "--artifacts-destination", str(artifacts)]
        else:
            where = ["ui", "--default-artifact-root", artifacts.as_uri()]
        self.cmd = [sys.executable, "-m", "mlflow", where[0], "--backend-store-uri", backend_uri, *where[1:],
                    "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self.log_path = artifacts.parent / f"mlflow-{where[0]}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> "Server":
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{' '.join(self.cmd[2:4])} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"MLflow did not answer on {self.url} within {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its worker processes
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@contextmanager
def mlflow_ui(backend_uri: str, artifacts: str | os.PathLike, *, timeout: float = 90, serve_artifacts: bool = False,
              port: int | None = None) -> Iterator[str]:
    """A running `Server` for the block; yields its base URL."""
    server = Server(backend_uri, artifacts, serve_artifacts=serve_artifacts, port=port).start(timeout)
    try:
        yield server.url
    finally:
        server.stop()


@contextmanager
def chromium(width: int = 1600, height: int = 1000) -> Iterator:
    """A headless Chromium driven by Selenium with the system chromedriver (no downloads)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        opts.add_argument(flag)
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"pgen-chromium-{os.getpid()}-{time.monotonic_ns()}"
    opts.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def show(driver, url: str, expect: list[str], *, timeout: float = 60, screenshot: str | os.PathLike | None = None) -> str:
    """Open ``url`` and wait until every string of ``expect`` is visible in the page; returns the page text."""
    driver.get(url)
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = driver.execute_script("return document.body.innerText") or ""  # off-screen text too
        if all(s in text for s in expect):
            break
        time.sleep(0.5)
    missing = [s for s in expect if s not in text]
    _close_assistant(driver)
    if screenshot:
        time.sleep(1.0)  # let images and charts finish drawing
        driver.save_screenshot(str(screenshot))
    if missing:
        raise AssertionError(f"{url}: not visible after {timeout:.0f} s: {missing}")
    return text


def _close_assistant(driver) -> None:
    """Close MLflow's assistant side panel (it covers a third of the page in screenshots)."""
    driver.execute_script(
        "for (const b of document.querySelectorAll('button[aria-label=Close]')) {"
        "  if (b.parentElement && b.parentElement.querySelector('button[aria-label=\"New Chat\"]')) { b.click(); }"
        "}"
        "for (const b of document.querySelectorAll('button')) { if (b.innerText.trim() === 'Got it') { b.click(); } }")
    time.sleep(0.5)


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment's training-runs table."""
    return f"{base}/#/experiments/{experiment_id}/runs"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    q = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])})
    return f"{base}/#/compare-runs?{q}"

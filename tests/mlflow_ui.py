"""The MLflow UI as people use it: `mlflow ui` on 127.0.0.1 and headless Chromium (Selenium, the system browser).

Shared by tests/test_ui.py and docs/make_ui_screenshots.py. Needs Debian's chromium and
chromium-driver (`.ci/run` installs them) and the `selenium` package; `available()` says why not.
"""

from __future__ import annotations

import json
import os
import shutil
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


@contextmanager
def mlflow_ui(backend_uri: str, artifacts: str | os.PathLike, *, timeout: float = 90) -> Iterator[str]:
    """Serve ``mlflow ui`` over a store on 127.0.0.1 (job execution off); yields its base URL."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", backend_uri, "--default-artifact-root",
           Path(artifacts).resolve().as_uri(), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(Path(artifacts).parent / f"mlflow-ui-{port}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow ui exited with {proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow ui did not answer on {url} within {timeout:.0f} s; see {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


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

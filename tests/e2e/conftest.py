"""A real studio (`streamlit run app.py`) and a real Chromium driven by Playwright."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def start_studio(data_dir: Path, log: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """Start the app the README's way (`streamlit run app.py`) on a free port, wait for health."""
    port = free_port()
    environment = {**os.environ, "LRS_DATA_DIR": str(data_dir), **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
        cwd=ROOT,
        env=environment,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:  # noqa: S310
                if reply.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"streamlit did not become healthy:\n{log.read_text()}")


@pytest.fixture(scope="session")
def studio_url(real_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    # Greedy decoding: the answers checked below must not depend on the luck of sampling.
    process, url = start_studio(real_data_dir, log, LRS_TEMPERATURE="0")
    yield url
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call" and report.failed:
        item.failed_call = True
    return report


@pytest.fixture
def page(browser, request):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    yield opened
    if getattr(request.node, "failed_call", False):  # what the browser showed when it failed
        screenshot(opened, f"failed-{request.node.name}")
    context.close()


def screenshot(page, name: str) -> Path:  # type: ignore[no-untyped-def]
    """Keep a screenshot as a test artifact under test-artifacts/e2e/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def training_step(page) -> int:  # type: ignore[no-untyped-def]
    """The step the Fine-tune page shows for the run in progress."""
    label = page.get_by_text(re.compile(r"step \d+ of \d+")).first
    label.wait_for(timeout=60_000)
    return int(re.search(r"step (\d+) of", label.inner_text()).group(1))


def wait_for_step_above(page, step: int) -> None:  # type: ignore[no-untyped-def]
    """Wait until the page shows training past `step`: the progress is live, not a snapshot."""
    page.wait_for_function(
        """seen => [...document.querySelectorAll('p, div')].some(e => {
            const found = e.textContent.match(/step ([0-9]+) of/);
            return found && +found[1] > seen;
        })""",
        arg=step,
        timeout=60_000,
    )


def export_demo(page, url: str, target: Path, before: str = "", built: str = "") -> Path:  # type: ignore[no-untyped-def]
    """Build a demo on the Share page and download it to `target`, with screenshots named
    `before` (the page before the build) and `built` (ready to download) when given."""
    page.goto(f"{url}/share")
    build = page.get_by_role("button", name="Build the demo file")
    build.wait_for(timeout=120_000)
    if before:
        screenshot(page, before)
    build.click()
    download = page.get_by_role("button", name="Download the demo file")
    download.wait_for(timeout=180_000)
    if built:
        screenshot(page, built)
    with page.expect_download() as waiting:
        download.click()
    waiting.value.save_as(target)
    return target

"""A real studio (`streamlit run app.py`) and a real Chromium driven by Playwright."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "e2e"


def chromium() -> str | None:
    """Debian's Chromium (FACTS.md: Playwright's own download fails here); None: Playwright's."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


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
        start_new_session=True,  # its own process group: stop_studio can end all of it
    )
    _started.append(process)
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
    stop_studio(process)
    raise RuntimeError(f"streamlit did not become healthy:\n{log.read_text()}")


# Studios started by start_studio, and the ones a session-wide fixture keeps for every test.
_started: list[subprocess.Popen] = []
_shared: set[int] = set()
STOP_WITHIN_S = 10


def stop_studio(process: subprocess.Popen) -> float:
    """SIGTERM, then SIGKILL to the whole process group if it has not ended within
    STOP_WITHIN_S; the seconds it took to end on its own (inf when it had to be killed)."""
    start = time.monotonic()
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            return math.inf
    return time.monotonic() - start


def trainers_under(folder: Path) -> list[int]:
    """Training workers (`python -m core.training.worker RUN_DIR`) whose run folder lies under
    `folder`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            words = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"core.training.worker" in words and any(str(folder).encode() in w for w in words):
            found.append(int(proc.name))
    return found


@pytest.fixture(autouse=True)
def nothing_outlives_its_test(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After each browser test: every studio it started has stopped, and no training worker of
    this test session still runs. What is left is killed, and the test fails."""
    yield
    left = [p for p in _started if p.pid not in _shared and p.poll() is None]
    workers = trainers_under(tmp_path_factory.getbasetemp())
    for process in left:
        stop_studio(process)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _started[:] = [p for p in _started if p.pid in _shared]
    assert not left, f"studios still running after the test: {[p.pid for p in left]}"
    assert not workers, f"training workers still running after the test: {workers}"


@pytest.fixture(scope="session")
def studio_url(real_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    # Greedy decoding: the answers checked below must not depend on the luck of sampling.
    process, url = start_studio(real_data_dir, log, LRS_TEMPERATURE="0")
    _shared.add(process.pid)
    yield url
    took = stop_studio(process)
    assert "Traceback" not in log.read_text(), log.read_text()
    assert took < STOP_WITHIN_S, "the studio did not stop within seconds of SIGTERM"


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call" and report.failed:
        item.failed_call = True
    return report


# Streamlit marks its app root with the script's state and every element a running script is about
# to replace with data-stale="true". An action on such an element goes to a box that is gone a
# moment later (a filled text vanishes, Enter sends nothing): every action waits for this first.
SETTLED = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    return !!app && app.getAttribute('data-test-script-state') !== 'running'
        && app.getAttribute('data-test-connection-state') === 'CONNECTED'
        && !document.querySelector('[data-stale="true"]');
}"""
SETTLE_TIMEOUT_MS = 180_000


def settle(page) -> None:  # type: ignore[no-untyped-def]
    """Wait (bounded) until no script runs and no element on the page is stale."""
    page.wait_for_function(SETTLED, timeout=SETTLE_TIMEOUT_MS, polling=50)


@pytest.fixture(autouse=True)
def settled_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every click, fill and key press of every browser test first waits for the page to settle
    (`settle`); a fill then checks the field holds the text, and Enter checks it again, so that a
    re-run in between cannot swallow what was typed. Pass `settled=False` to act on a page whose
    script keeps running on purpose (cancelling an answer that is streaming)."""
    from playwright.sync_api import Locator, expect

    def wrap(name: str):  # type: ignore[no-untyped-def]
        original = getattr(Locator, name)

        def acting(self, *args, settled: bool = True, **kwargs):  # type: ignore[no-untyped-def]
            if settled:
                settle(self.page)
            if name == "press" and (args[:1] or [kwargs.get("key")])[0] == "Enter":
                typed = getattr(self, "_typed", None)
                if typed is not None:
                    expect(self).to_have_value(typed, timeout=10_000)
            result = original(self, *args, **kwargs)
            if name == "fill":
                text = args[0] if args else kwargs["value"]
                expect(self).to_have_value(text, timeout=10_000)
                self._typed = text
            return result

        return acting

    for name in ("click", "fill", "press", "check", "set_input_files", "select_option"):
        monkeypatch.setattr(Locator, name, wrap(name))


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

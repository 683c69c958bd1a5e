"""The studio killed and started again while a run trains: the page finds the run again."""

import os
import signal
import time
from pathlib import Path

import pytest

from core.processes import process_alive
from core.settings import Settings
from core.training import jobs, run_folder
from tests.e2e.conftest import (
    STOP_WITHIN_S,
    screenshot,
    start_studio,
    stop_studio,
    training_step,
    wait_for_step_above,
)
from tests.support.training import alpaca_rows

pytestmark = [pytest.mark.e2e]


def test_a_restarted_studio_shows_the_run_still_training(
    page, tmp_path: Path, tiny_model_dir: Path
) -> None:
    data_dir = tmp_path / "data"
    environment = {"LRS_BASE_MODEL": str(tiny_model_dir)}
    first, url = start_studio(data_dir, tmp_path / "first.log", **environment)
    dataset = tmp_path / "facts.jsonl"
    dataset.write_bytes(alpaca_rows(200))
    try:
        page.goto(f"{url}/finetune")
        page.locator("input[type=file]").set_input_files(str(dataset))
        page.get_by_text("200 examples, recognised").wait_for(timeout=60_000)
        page.get_by_text("Advanced", exact=True).click()
        epochs = page.get_by_role("spinbutton", name="Epochs")
        epochs.fill("40")
        epochs.press("Enter")
        page.get_by_text("Adapter name").click()  # let the new value reach the server
        page.get_by_role("button", name="Start training").click()
        before = training_step(page)
    finally:
        first.send_signal(signal.SIGKILL)  # the server dies without any chance to clean up
        first.wait()

    settings = Settings(_env_file=None, data_dir=data_dir, base_model=str(tiny_model_dir))
    run = jobs.active_run(settings)
    assert run is not None, "the worker must outlive the server"
    second, url = start_studio(data_dir, tmp_path / "second.log", **environment)
    cancelled = False
    try:
        page.goto(f"{url}/finetune")
        page.get_by_role("heading", name="Training", exact=True).wait_for(timeout=60_000)
        later = training_step(page)
        assert later > before
        wait_for_step_above(page, later)
        screenshot(page, "23-finetune-after-restart")
        page.get_by_role("button", name="Cancel training").click()
        page.get_by_text("Cancelled").first.wait_for(timeout=60_000)
        cancelled = True
        assert page.get_by_test_id("stException").count() == 0
    finally:
        # A cancelled worker says so, then exits: wait for it (bounded), kill it if it does not.
        pid = run_folder.read_status(run.folder).get("pid")
        deadline = time.monotonic() + 60
        while pid and process_alive(f"{os.uname().nodename}:{pid}"):
            if time.monotonic() > deadline or (jobs.read(run.folder).active and not cancelled):
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        assert stop_studio(second) < STOP_WITHIN_S

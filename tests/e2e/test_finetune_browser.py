"""Fine-tuning in a real browser: drop a dataset, train the quick preset, see the adapter."""

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, screenshot, training_step, wait_for_step_above

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_upload_train_watch_and_see_the_adapter(page, studio_url: str, tmp_path: Path) -> None:
    # 48 of the example's rows: the quick preset then trains in well under a minute on CPU.
    rows = (ROOT / "assets" / "examples" / "persona.jsonl").read_text().splitlines()[:48]
    dataset = tmp_path / "lumen.jsonl"
    dataset.write_text("\n".join(rows) + "\n")

    page.goto(f"{studio_url}/finetune")
    page.get_by_role("button", name="Try with an example").wait_for(timeout=90_000)
    page.locator("input[type=file]").set_input_files(str(dataset))
    page.get_by_text("48 examples, recognised as instruction / input / output").wait_for(
        timeout=60_000
    )
    page.get_by_text(re.compile(r"Quick try · about \d+")).wait_for(timeout=120_000)
    screenshot(page, "20-finetune-data")

    page.get_by_label("Adapter name").fill("Lumen quick")
    page.get_by_role("button", name="Start training").click()
    wait_for_step_above(page, training_step(page))
    page.get_by_role("heading", name="Training", exact=True).scroll_into_view_if_needed()
    screenshot(page, "21-finetune-training")

    page.get_by_text("Finished in").wait_for(timeout=240_000)
    # Other tests of the session may have trained adapters in the same data folder.
    adapters = page.get_by_role("heading", name=re.compile(r"Your adapters \(\d+\)"))
    adapters.wait_for(timeout=30_000)
    card = page.get_by_text("Lumen quick", exact=True).last
    card.wait_for(timeout=30_000)
    card.scroll_into_view_if_needed()
    screenshot(page, "22-finetune-adapter")
    assert page.get_by_test_id("stException").count() == 0

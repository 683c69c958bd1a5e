"""Adding documents goes on in the background while the user does other things: types into the
search preview, switches pages, closes the tab. Every file ends up added or failed with its
reason, a new tab sees the outcome, and a second batch can be cancelled from the page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import STOP_WITHIN_S, screenshot, start_studio, stop_studio
from tests.support.documents import docx_bytes, pdf_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WAIT_MS = 180_000


def logbook(entries: int) -> str:
    """Several hundred passages: tens of seconds of embedding on 2 cores."""
    return "".join(
        f"Entry {n}: wind from the west at {n % 40} knots, sea state {n % 7}. "
        for n in range(entries)
    )


def test_documents_keep_being_added_while_the_user_does_other_things(
    page, fresh_real_data_dir, tmp_path: Path
) -> None:
    files = {
        "first.txt": b"The first keeper lit the lamp at dusk. " * 20,
        "logbook.txt": logbook(3000).encode(),
        "broken.pdf": b"this is no PDF at all",
        "boats.docx": docx_bytes(["Boats must be registered.", "Sailing school opens in May."]),
        "handbook.pdf": pdf_bytes(["Welcome.", "The release code is BLUE-HARBOR-42."]),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "second.txt").write_text(logbook(3000).replace("Entry", "Record"))
    log = tmp_path / "studio.log"
    process, url = start_studio(fresh_real_data_dir(), log)
    try:
        page.goto(f"{url}/knowledge")
        page.get_by_text("Create a knowledge base to start").wait_for(timeout=WAIT_MS)
        page.get_by_label("Name").fill("Logbook")
        page.get_by_role("button", name="Create").click()
        page.get_by_text("Add documents").wait_for(timeout=WAIT_MS)
        page.locator("input[type=file]").set_input_files([str(tmp_path / n) for n in files])
        page.get_by_text("handbook.pdf").first.wait_for()
        page.get_by_role("button", name="Add to knowledge base").click()
        page.get_by_text("Adding 5 file(s)").wait_for(timeout=WAIT_MS)

        # While it adds: a question typed into the search preview...
        page.get_by_label("Question").fill("wind from the west")
        page.get_by_label("Question").press("Enter")
        page.get_by_text(re.compile(r"^Searched in \d+ ms")).wait_for(timeout=WAIT_MS)
        screenshot(page, "90-adding-while-searching")
        assert page.get_by_text("Adding 5 file(s)").count() == 1  # ...did not stop it

        # ...another page and back, in the same session...
        page.get_by_role("link", name="Arena").click()
        page.get_by_role("heading", name="Arena").wait_for(timeout=WAIT_MS)
        page.get_by_role("link", name="Knowledge base").click()
        page.get_by_text(re.compile(r"Adding 5 file\(s\)|Done: ")).first.wait_for(timeout=WAIT_MS)
        screenshot(page, "91-adding-after-switching-pages")

        # ...and the tab closed: a new one sees the outcome of every file.
        context = page.context
        page.close()
        page = context.new_page()
        page.goto(f"{url}/knowledge")
        page.get_by_text("Done: 4 of 5 file(s) in the knowledge base").wait_for(timeout=WAIT_MS)
        page.get_by_text("Documents (4)").wait_for(timeout=WAIT_MS)
        failed = page.get_by_test_id("stAlertContentError")
        assert failed.count() == 1 and "not a PDF" in failed.inner_text()
        for name in ("first.txt", "logbook.txt", "boats.docx", "handbook.pdf"):
            assert page.get_by_test_id("stAlertContentSuccess").filter(has_text=name).count() == 1
        screenshot(page, "92-adding-done-in-a-new-tab")

        # A second batch, cancelled while it adds: the file is taken back out, nothing is half in.
        page.locator("input[type=file]").set_input_files(str(tmp_path / "second.txt"))
        page.get_by_text("second.txt").first.wait_for()
        page.get_by_role("button", name="Add to knowledge base").click()
        page.get_by_text(re.compile(r"Embedding second\.txt: [1-9]\d* of")).wait_for(
            timeout=WAIT_MS
        )
        page.get_by_role("button", name="Cancel adding").click()
        page.get_by_text("Cancelled: 0 of 1 file(s) were added before it stopped").wait_for(
            timeout=WAIT_MS
        )
        page.get_by_text("Documents (4)").wait_for(timeout=WAIT_MS)
        screenshot(page, "93-adding-cancelled")
        assert page.get_by_test_id("stException").count() == 0
    finally:
        assert stop_studio(process) < STOP_WITHIN_S
    assert "Traceback" not in log.read_text()

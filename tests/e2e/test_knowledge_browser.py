"""The knowledge base in a real browser: create, drop a PDF and a DOCX, see them, search them."""

import re
from pathlib import Path

import pytest

from tests.documents import docx_bytes, pdf_bytes
from tests.e2e.conftest import screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PAGES = [
    "Welcome to the Harbor handbook. This handbook explains how the harbor office works.",
    "Opening hours. The harbor office opens at eight in the morning on weekdays.",
    "Security. The release code for the north gate is BLUE-HARBOR-42. Keep it private.",
]


def test_drop_documents_see_them_and_search_them(page, studio_url: str, tmp_path: Path) -> None:
    pdf = tmp_path / "harbor-handbook.pdf"
    pdf.write_bytes(pdf_bytes(PAGES))
    docx = tmp_path / "boats.docx"
    docx.write_bytes(docx_bytes(["Boats must be registered.", "Mooring costs 12 euros a night."]))

    page.goto(f"{studio_url}/knowledge")
    page.get_by_text("Create a knowledge base to start").wait_for(timeout=90_000)
    page.get_by_label("Name").fill("Harbor")
    page.get_by_role("button", name="Create").click()
    page.get_by_text("Add documents").wait_for()
    screenshot(page, "10-knowledge-empty")

    page.locator("input[type=file]").set_input_files([str(pdf), str(docx)])
    page.get_by_text("boats.docx").first.wait_for()
    page.get_by_role("button", name="Add to knowledge base").click()
    page.get_by_text(re.compile(r"Added \d+ passages? from 3 pages")).wait_for(timeout=120_000)
    page.get_by_text("Documents (2)").wait_for()
    screenshot(page, "11-knowledge-added")

    page.get_by_label("Question").fill("What is the release code for the north gate?")
    page.get_by_label("Question").press("Enter")
    hit = page.get_by_text(re.compile(r"1\. harbor-handbook\.pdf, page 3"))
    hit.wait_for(timeout=60_000)
    assert page.get_by_text("BLUE-HARBOR-42").count() >= 1
    hit.scroll_into_view_if_needed()
    screenshot(page, "12-knowledge-search")
    assert page.get_by_test_id("stException").count() == 0

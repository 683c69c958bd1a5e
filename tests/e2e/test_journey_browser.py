"""The whole journey of a new user, in a real browser against the app started the README's way:
Home -> a knowledge base of three formats -> search -> fine-tune -> arena -> evaluate ->
recommendation -> export a demo -> the demo answers. A screenshot at every step
(test-artifacts/e2e/6x-journey-*.png, 7x for the demo)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    ROOT,
    STOP_WITHIN_S,
    export_demo,
    screenshot,
    settle,
    start_studio,
    stop_studio,
    training_step,
    wait_for_step_above,
)
from tests.support.documents import docx_bytes, pdf_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUESTION = "What is the release code for night departures?"
HANDBOOK = [
    "Vellmar harbour handbook. Chapter 1: the history of the harbour since 1871.",
    "Chapter 2: night departures. The release code for night departures is BLUE-HARBOR-42. "
    "Captains radio it to the tower before they leave the basin.",
    "Chapter 3: the harbour office opens at eight in the morning on weekdays.",
]
HTML = (
    "<html><head><title>Fees</title><script>alert('no')</script></head><body>"
    "<h1>Harbour fees</h1><p>Mooring costs 12 euros a night in the east basin.</p>"
    "<p>Showers cost 2 euros.</p></body></html>"
)
QUESTIONS = [
    {"question": QUESTION, "reference": "BLUE-HARBOR-42"},
    {"question": "How much does mooring cost a night in the east basin?", "reference": "12 euros"},
    {"question": "What is the name of the harbour?", "reference": "Vellmar"},
]


def no_error_on(page) -> None:  # type: ignore[no-untyped-def]
    assert page.get_by_test_id("stException").count() == 0
    assert page.get_by_text("Traceback").count() == 0


def stop(process: subprocess.Popen, log: Path) -> None:
    assert stop_studio(process) < STOP_WITHIN_S, "it must stop within seconds of SIGTERM"
    assert "Traceback" not in log.read_text(), log.read_text()


def test_the_whole_journey_of_a_new_user(page, fresh_real_data_dir, tmp_path: Path) -> None:
    files = {
        "handbook.pdf": pdf_bytes(HANDBOOK),
        "boats.docx": docx_bytes(["Boats must be registered.", "Sailing school opens in May."]),
        "fees.html": HTML.encode(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    rows = (ROOT / "assets" / "examples" / "persona.jsonl").read_text().splitlines()[:48]
    (tmp_path / "lumen.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "questions.jsonl").write_text("\n".join(json.dumps(q) for q in QUESTIONS))

    process, url = start_studio(fresh_real_data_dir(), tmp_path / "studio.log", LRS_TEMPERATURE="0")
    try:
        # 1. Home says what to do.
        page.goto(url)
        page.get_by_role("heading", name="Start here").wait_for(timeout=120_000)
        page.get_by_role("link", name="Build a knowledge base").wait_for()
        screenshot(page, "60-journey-home")

        # 2. A knowledge base with three formats; 3. the search preview finds the fact's page.
        page.get_by_role("link", name="Build a knowledge base").click()
        page.get_by_text("Create a knowledge base to start").wait_for(timeout=120_000)
        page.get_by_label("Name").fill("Harbour")
        page.get_by_role("button", name="Create").click()
        page.get_by_text("Add documents").wait_for(timeout=60_000)
        page.locator("input[type=file]").set_input_files([str(tmp_path / n) for n in files])
        page.get_by_text("fees.html").first.wait_for()
        page.get_by_role("button", name="Add to knowledge base").click()
        page.get_by_text("Documents (3)").wait_for(timeout=180_000)
        screenshot(page, "61-journey-knowledge")
        page.get_by_label("Question").fill(QUESTION)
        page.get_by_label("Question").press("Enter")
        hit = page.get_by_text(re.compile(r"1\. handbook\.pdf, page 2"))
        hit.wait_for(timeout=60_000)
        hit.scroll_into_view_if_needed()
        assert page.get_by_text("BLUE-HARBOR-42").count() >= 1
        screenshot(page, "62-journey-search")
        no_error_on(page)

        # 4. A small dataset, 5. the quick preset, 6. the adapter appears.
        page.goto(f"{url}/finetune")
        page.get_by_role("button", name="Try with an example").wait_for(timeout=120_000)
        page.locator("input[type=file]").set_input_files(str(tmp_path / "lumen.jsonl"))
        page.get_by_text("48 examples, recognised as instruction / input / output").wait_for(
            timeout=60_000
        )
        # the preset's estimated duration, once the speed probe has measured this machine
        page.get_by_text(re.compile(r"^About \d.*\. A short run")).wait_for(timeout=120_000)
        # Quick try (Balanced is the default): the journey checks the way through, in less time
        page.get_by_text("Quick try", exact=True).click()
        page.get_by_text("32 learning steps may be too few").wait_for(timeout=30_000)
        screenshot(page, "63-journey-dataset")
        page.get_by_label("Adapter name").fill("Captain Lumen")
        page.get_by_role("button", name="Start training").click()
        wait_for_step_above(page, training_step(page))
        screenshot(page, "64-journey-training")
        page.get_by_text("Finished in").wait_for(timeout=300_000)
        card = page.get_by_text("Captain Lumen", exact=True).last
        card.wait_for(timeout=30_000)
        card.scroll_into_view_if_needed()
        # the after-training check: one sentence on held-out examples, both answers beside it
        page.get_by_text(re.compile(r"^On \d+ held-out examples?, the tuned model")).first.wait_for(
            timeout=30_000
        )
        screenshot(page, "65-journey-adapter")
        no_error_on(page)

        # 6b. The tuned model taken out: merged weights, and GGUF with an Ollama Modelfile.
        page.get_by_text("Take it out of the studio").first.click()
        page.get_by_role("button", name="Make the files").click()
        page.get_by_role("button", name=re.compile(r"GGUF \+ Modelfile \(\.zip\)")).wait_for(
            timeout=180_000
        )
        assert page.get_by_role("button", name=re.compile(r"Merged model \(\.zip\)")).count() == 1
        screenshot(page, "65b-journey-take-away")
        no_error_on(page)

        # 7. The arena: four answers, RAG and hybrid with their sources.
        page.goto(f"{url}/arena")
        box = page.get_by_test_id("stChatInputTextArea")
        box.wait_for(timeout=180_000)
        box.fill(QUESTION)
        box.press("Enter")
        page.get_by_text("Download JSON").wait_for(timeout=180_000)
        settle(page)  # the run that shows every column has ended (the button comes first)
        for title in ["Base model", "Fine-tuned (LoRA)", "RAG", "Fine-tuned + RAG"]:
            assert page.get_by_text(title, exact=True).count() >= 1
        assert page.get_by_text(re.compile(r"^Sources \(\d\)$")).count() == 2
        rag = page.get_by_test_id("stColumn").filter(has=page.get_by_text("RAG", exact=True)).last
        assert "BLUE-HARBOR-42" in rag.inner_text()
        screenshot(page, "66-journey-arena")
        no_error_on(page)

        # 8. Evaluate on a small question set; 9. a recommendation.
        page.goto(f"{url}/evaluate")
        page.get_by_text("Drop a file of questions").wait_for(timeout=120_000)
        page.locator("input[type=file]").set_input_files(str(tmp_path / "questions.jsonl"))
        run = page.get_by_role("button", name="Evaluate 3 questions in 4 modes")
        run.wait_for(timeout=60_000)
        screenshot(page, "67-journey-questions")
        run.click()
        page.get_by_text("What each option costs").wait_for(timeout=300_000)
        page.get_by_text("What each option costs").scroll_into_view_if_needed()
        assert page.locator("h4").filter(has_text=re.compile(r"\w")).count() >= 1
        screenshot(page, "68-journey-recommendation")
        no_error_on(page)

        # 10. Export a demo.
        bundle = export_demo(page, url, tmp_path / "harbour-demo.zip", built="69-journey-export")
        no_error_on(page)
    finally:
        stop(process, tmp_path / "studio.log")

    # 11. The demo, started elsewhere, 12. answers in its arena.
    process, url = start_studio(
        fresh_real_data_dir(), tmp_path / "demo.log", LRS_DEMO_BUNDLE=str(bundle)
    )
    try:
        page.goto(url)
        page.get_by_text("This is a demo").wait_for(timeout=180_000)
        screenshot(page, "70-journey-demo-home")
        page.get_by_role("link", name="Ask in the Arena").click()
        box = page.get_by_test_id("stChatInputTextArea")
        box.wait_for(timeout=180_000)
        box.fill(QUESTION)
        box.press("Enter")
        page.get_by_text("Download JSON").wait_for(timeout=180_000)
        settle(page)  # the run that shows every column has ended (the button comes first)
        rag = page.get_by_test_id("stColumn").filter(has=page.get_by_text("RAG", exact=True)).last
        assert "BLUE-HARBOR-42" in rag.inner_text()
        assert page.get_by_text(re.compile(r"^Sources \(\d\)$")).count() == 2
        screenshot(page, "71-journey-demo-arena")
        no_error_on(page)
    finally:
        stop(process, tmp_path / "demo.log")

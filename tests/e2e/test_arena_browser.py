"""The arena in a real browser: one question, four answers streamed side by side."""

import re
from collections.abc import Iterator

import pytest

from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.store import KnowledgeStore
from core.model import loading
from core.settings import Settings
from core.training import jobs, worker
from core.training.config import TrainConfig
from core.training.datasets import parse_dataset
from tests.e2e.conftest import STOP_WITHIN_S, _shared, screenshot, start_studio, stop_studio
from tests.support.documents import pdf_bytes
from tests.support.training import alpaca_rows

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KB_NAME = "Arena handbook"


@pytest.fixture(scope="module")
def arena_url(fresh_real_data_dir, tmp_path_factory) -> Iterator[str]:
    """A studio of its own (the other browser tests expect an empty one) with a knowledge base
    holding the fact and an adapter (one quick training step); the prepared model is shared."""
    data_dir = fresh_real_data_dir()
    settings = Settings(_env_file=None, data_dir=data_dir)
    store = KnowledgeStore(settings, loading.load_embeddings(settings))
    pages = [
        "Harbour handbook. Chapter 1: the history of the Vellmar harbour since 1871.",
        "Chapter 2: night departures. The release code for night departures is "
        "BLUE-HARBOR-42. Captains radio it to the tower before they leave the basin.",
    ]
    files = [UploadedFile("handbook.pdf", pdf_bytes(pages))]
    list(ingest(store.create(KB_NAME), files, ChunkSettings()))
    data = parse_dataset("tiny.jsonl", alpaca_rows(8))
    config = TrainConfig(batch_size=4, epochs=1, max_length=64)
    run_dir = jobs.create(settings, data, config, name="Arena test adapter")
    assert worker.run(run_dir) == "completed"
    log = tmp_path_factory.mktemp("arena-streamlit") / "streamlit.log"
    process, url = start_studio(data_dir, log, LRS_TEMPERATURE="0")
    _shared.add(process.pid)
    yield url
    assert stop_studio(process) < STOP_WITHIN_S
    assert "Traceback" not in log.read_text(), log.read_text()


def test_one_question_four_streamed_answers_two_with_sources(page, arena_url) -> None:
    page.goto(f"{arena_url}/arena")
    box = page.get_by_test_id("stChatInputTextArea")
    box.wait_for(timeout=180_000)
    page.get_by_text("Ask something your documents").wait_for()
    screenshot(page, "20-arena-ready")

    box.fill("What is the release code for night departures?")
    box.press("Enter")
    columns = page.get_by_test_id("stColumn").filter(has=page.get_by_text(re.compile("▌")))
    columns.first.wait_for(timeout=60_000)  # answers arrive with a cursor while they grow
    live = columns.count()
    screenshot(page, "21-arena-streaming")
    page.get_by_text("Download JSON").wait_for(timeout=120_000)
    screenshot(page, "22-arena-answered")

    titles = ["Base model", "Fine-tuned (LoRA)", "RAG", "Fine-tuned + RAG"]
    for title in titles:
        assert page.get_by_text(title, exact=True).count() >= 1
    assert live >= 1
    assert page.get_by_text("First token").count() == 4
    assert page.get_by_text(re.compile(r"^Sources \(\d\)$")).count() == 2
    rag = page.get_by_test_id("stColumn").filter(has=page.get_by_text("RAG", exact=True)).last
    assert "BLUE-HARBOR-42" in rag.inner_text()
    page.get_by_text(re.compile(r"^Sources")).first.click()
    page.get_by_text("handbook.pdf").first.wait_for()
    assert page.get_by_test_id("stException").count() == 0

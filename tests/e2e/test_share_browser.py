"""Share in a real browser: export a demo, open it in demo mode, ask the arena there."""

import re
import subprocess

import pytest

from core.evaluation import runner
from core.evaluation.questions import EvalItem
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.store import KnowledgeStore
from core.model import loading
from core.model.chat import SamplingParams
from core.model.local import HFChatModel
from core.settings import Settings
from core.training import adapters, jobs, worker
from core.training.config import TrainConfig
from core.training.datasets import parse_dataset
from tests.e2e.conftest import (
    STOP_WITHIN_S,
    export_demo,
    screenshot,
    settle,
    start_studio,
    stop_studio,
)
from tests.support.documents import pdf_bytes
from tests.support.training import alpaca_rows

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
QUESTION = "What is the release code for night departures?"


def visit(page, url: str) -> None:  # type: ignore[no-untyped-def]
    """Open a page of the password-protected demo (each visit is a new session: it asks)."""
    page.goto(url)
    password = page.get_by_label("Password", exact=True)
    password.wait_for(timeout=180_000)
    password.fill("harbour")
    page.get_by_role("button", name="Open").click()


def stop(process: subprocess.Popen, log) -> None:  # type: ignore[no-untyped-def]
    assert stop_studio(process) < STOP_WITHIN_S, "it must stop within seconds of SIGTERM"
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def made(fresh_real_data_dir) -> dict:
    """A studio with a knowledge base, an adapter (one quick step) and an evaluation report."""
    data_dir = fresh_real_data_dir()
    settings = Settings(_env_file=None, data_dir=data_dir, temperature=0.0)
    store = KnowledgeStore(settings, loading.load_embeddings(settings))
    pages = [
        "Harbour handbook. Chapter 1: the history of the Vellmar harbour since 1871.",
        "Chapter 2: night departures. The release code for night departures is "
        "BLUE-HARBOR-42. Captains radio it to the tower before they leave the basin.",
    ]
    kb = store.create("Harbour handbook")
    list(ingest(kb, [UploadedFile("handbook.pdf", pdf_bytes(pages))], ChunkSettings()))
    data = parse_dataset("tiny.jsonl", alpaca_rows(8))
    run_dir = jobs.create(
        settings, data, TrainConfig(batch_size=4, epochs=1, max_length=64), name="Harbour voice"
    )
    assert worker.run(run_dir) == "completed"
    chat = HFChatModel(loading.load_chat_model(settings))
    report = runner.new_report(
        settings,
        chat,
        [EvalItem(QUESTION, "BLUE-HARBOR-42")],
        adapter=adapters.get(settings, run_dir.name),
        kb=kb,
        params=SamplingParams(0.0, 1.0, 48),
        name="Harbour check",
    )
    runner.run(settings, chat, report, kb)
    return {"data_dir": data_dir, "report": report.id}


def test_export_a_demo_open_it_read_only_and_ask_there(
    page, made, fresh_real_data_dir, tmp_path_factory
) -> None:
    logs = tmp_path_factory.mktemp("share-streamlit")
    process, url = start_studio(made["data_dir"], logs / "studio.log", LRS_TEMPERATURE="0")
    try:
        bundle = export_demo(
            page,
            url,
            tmp_path_factory.mktemp("bundle") / "demo.zip",
            before="40-share-export",
            built="41-share-built",
        )

        page.get_by_role("tab", name="Import a demo").click()
        page.locator("input[type=file]").set_input_files(str(bundle))
        page.get_by_text("Already here").wait_for(timeout=60_000)
        screenshot(page, "45-share-import-plan")
        page.get_by_role("button", name="Import", exact=True).click()
        page.get_by_text("Imported 1 knowledge bases").wait_for(timeout=120_000)
        screenshot(page, "46-share-imported")
        page.get_by_role("tab", name="Links").click()
        page.get_by_text("/evaluate?report=").first.wait_for()
        screenshot(page, "47-share-links")
    finally:
        stop(process, logs / "studio.log")
    assert bundle.stat().st_size > 100_000

    demo_dir = fresh_real_data_dir()
    process, url = start_studio(
        demo_dir, logs / "demo.log", LRS_DEMO_BUNDLE=str(bundle), LRS_DEMO_PASSWORD="harbour"
    )
    try:
        page.goto(url)
        password = page.get_by_label("Password", exact=True)
        password.wait_for(timeout=180_000)
        assert page.get_by_text("This is a demo").count() == 0
        screenshot(page, "48-demo-password")
        password.fill("harbour")
        page.get_by_role("button", name="Open").click()
        page.get_by_text("This is a demo").wait_for(timeout=180_000)
        navigation = page.get_by_test_id("stSidebarNav")
        assert navigation.get_by_text("Arena").count() == 1
        assert navigation.get_by_text("Fine-tune").count() == 0
        assert navigation.get_by_text("Share").count() == 0
        screenshot(page, "42-demo-home")

        visit(page, f"{url}/knowledge")
        page.get_by_text("Documents (1)").wait_for(timeout=60_000)
        assert page.get_by_text("Drop files here").count() == 0
        assert page.get_by_role("button", name="Add to knowledge base").count() == 0
        assert page.get_by_role("button", name="Delete").count() == 0
        page.get_by_text("What would the model see?").wait_for(timeout=60_000)
        page.get_by_test_id("stDataFrame").first.wait_for(timeout=60_000)
        screenshot(page, "49-demo-knowledge")

        visit(page, f"{url}/arena")
        box = page.get_by_test_id("stChatInputTextArea")
        box.wait_for(timeout=180_000)
        box.fill(QUESTION)
        box.press("Enter")
        page.get_by_text("Download JSON").wait_for(timeout=180_000)
        settle(page)  # the run that shows every column has ended (the button comes first)
        screenshot(page, "43-demo-arena")
        rag = page.get_by_test_id("stColumn").filter(has=page.get_by_text("RAG", exact=True)).last
        assert "BLUE-HARBOR-42" in rag.inner_text()
        assert page.get_by_text(re.compile(r"^Sources \(\d\)$")).count() == 2
        assert page.get_by_test_id("stException").count() == 0

        visit(page, f"{url}/evaluate?report={made['report']}")
        page.get_by_role("heading", name="Harbour check").wait_for(timeout=60_000)
        assert page.get_by_role("button", name="New evaluation").count() == 0
        screenshot(page, "44-demo-report-link")
    finally:
        stop(process, logs / "demo.log")
    demo_data = next((demo_dir / "demos").iterdir())
    assert not (demo_data / "arena" / "conversations").exists()  # visitors leave nothing behind

"""The studio pointed at a real vLLM server (LRS_ENGINE_URL): the arena answers every mode in a
real browser, an adapter the studio trained is registered with the server and changes its
answers, and a server stopped mid-answer gives one plain sentence, then works again once back."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.store import KnowledgeStore
from core.model import loading
from core.settings import Settings
from core.training.config import PRESETS
from tests.e2e.conftest import (
    STOP_WITHIN_S,
    _shared,
    screenshot,
    start_studio,
    stop_studio,
)
from tests.support import vllm_server
from tests.support.documents import pdf_bytes
from tests.support.training import copy_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUESTION = "What is your name?"  # the adapter was trained to answer it its own way


RANK = PRESETS["balanced"].config.rank  # the example persona's (tests/conftest.real_persona_run)


@pytest.fixture(scope="module")
def served(
    fresh_real_data_dir, real_persona_run, tmp_path_factory
) -> Iterator[tuple[str, vllm_server.Server, str]]:
    """A studio with a knowledge base and an adapter it trained, a vLLM server on the same
    model, and the studio started against it: (studio address, server, adapter run id)."""
    data_dir = fresh_real_data_dir()
    settings = Settings(_env_file=None, data_dir=data_dir)
    store = KnowledgeStore(settings, loading.load_embeddings(settings))
    pages = [
        "Harbour handbook. Chapter 2: night departures. The release code for night departures "
        "is BLUE-HARBOR-42. Captains radio it to the tower before they leave the basin."
    ]
    list(ingest(store.create("Handbook"), [UploadedFile("handbook.pdf", pdf_bytes(pages))],
                ChunkSettings()))  # fmt: skip
    run_id = copy_run(real_persona_run, data_dir)  # the example persona, trained by the studio
    logs = tmp_path_factory.mktemp("vllm")
    model_dir = loading.prepare_model(settings.base_model, settings)
    # The server takes adapters up to the persona's rank (Balanced: 16) and no more (start()).
    server = vllm_server.start(model_dir, logs / "vllm.log", max_lora_rank=RANK)
    process, url = start_studio(
        data_dir,
        logs / "streamlit.log",
        LRS_ENGINE_URL=server.url,
        LRS_ENGINE_MODEL=server.model,
        LRS_TEMPERATURE="0",
        LRS_MAX_NEW_TOKENS="48",
    )
    _shared.add(process.pid)
    try:
        yield url, server, run_id
    finally:
        assert stop_studio(process) < STOP_WITHIN_S
        server.stop()
    log = (logs / "streamlit.log").read_text()
    assert "Traceback" not in log, log


def ask(page, url: str, question: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{url}/arena")
    box = page.get_by_test_id("stChatInputTextArea")
    box.wait_for(timeout=180_000)
    box.fill(question)
    box.press("Enter")


def column(page, title: str):  # type: ignore[no-untyped-def]
    return page.get_by_test_id("stColumn").filter(has=page.get_by_text(title, exact=True)).last


def answer_text(page, title: str) -> str:  # type: ignore[no-untyped-def]
    """The answer in a column: its text without the column's title and timings."""
    text = column(page, title).inner_text().split("First token")[0]
    return text.strip().removeprefix(title).strip()


def test_the_arena_answers_every_mode_from_vllm_with_the_studios_adapter(page, served) -> None:
    url, server, run_id = served
    page.goto(url)
    page.get_by_text(re.compile(f"serving {server.model} \\(2048 tokens")).wait_for(timeout=120_000)
    assert f"Answers come from the server at {server.url}" in page.inner_text("body")
    screenshot(page, "90-vllm-home")
    ask(page, url, QUESTION)
    page.get_by_text("Download JSON").wait_for(timeout=240_000)
    screenshot(page, "91-vllm-arena")
    assert page.get_by_text("First token").count() == 4  # four answers, none an error
    assert page.get_by_test_id("stAlertContentError").count() == 0
    assert run_id in server.adapters()  # the studio registered its adapter by name
    base, tuned = (answer_text(page, t) for t in ("Base model", "Fine-tuned (LoRA)"))
    # The server answered with the adapter, and without it where asked (the example persona's
    # name; vLLM's CPU build gave base rows the adapter when --max-loras was 1).
    assert "Lumen" in tuned and "Lumen" not in base, (base, tuned)
    # The reading modes were sent the passages (whether a 135M model quotes them is not vLLM's).
    assert page.get_by_text(re.compile(r"^Sources \(\d\)$")).count() == 2


def test_a_server_stopped_mid_answer_is_named_plainly_and_the_next_question_works(
    page, served, tmp_path
) -> None:
    url, server, run_id = served
    ask(page, url, "Tell me a long story about the harbour and its ships.")
    # A column with words of its answer before the cursor: the answers are being written.
    streaming = page.get_by_test_id("stColumn").filter(has_text=re.compile(r"\w \w+ ▌"))
    streaming.first.wait_for(timeout=120_000)
    server.kill()  # the server goes away in the middle of the answers
    page.get_by_text("stopped in the middle of the answer").first.wait_for(timeout=120_000)
    screenshot(page, "92-vllm-stopped")
    assert page.get_by_test_id("stException").count() == 0

    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    model_dir = server.process.args[server.process.args.index("--model") + 1]
    again = vllm_server.start(model_dir, server.log, port=port, max_lora_rank=RANK)  # no adapters
    server.process = again.process
    ask(page, url, QUESTION)  # a new conversation: only this question on the page
    page.get_by_text("Download JSON").wait_for(timeout=240_000)
    screenshot(page, "93-vllm-back")
    assert page.get_by_text("First token").count() == 4
    assert page.get_by_test_id("stAlertContentError").count() == 0
    assert run_id in again.adapters()  # registered again by the studio

"""The arena with the real default models: RAG answers from an uploaded document."""

import pytest

from core import arena, models
from core.generate import HFChatModel, SamplingParams
from core.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge import KnowledgeStore
from core.retrieve import search
from core.settings import Settings
from tests.documents import pdf_bytes

pytestmark = pytest.mark.slow

HANDBOOK = [
    "Harbour operations handbook. Chapter 1: history of the Vellmar harbour since 1871.",
    "Chapter 2: night departures. The release code for night departures is BLUE-HARBOR-42. "
    "Captains radio it to the tower before they leave the basin.",
    "Chapter 3: fees. Berth bookings cancelled late are refunded within 45 days.",
]


def test_a_fact_only_in_the_document_is_answered_by_rag_and_not_by_the_base_model(
    fresh_real_data_dir,
) -> None:
    settings = Settings(_env_file=None, data_dir=fresh_real_data_dir())
    chat = HFChatModel(models.load_chat_model(settings))
    kb = KnowledgeStore(settings, models.load_embeddings(settings)).create("Harbour")
    list(ingest(kb, [UploadedFile("handbook.pdf", pdf_bytes(HANDBOOK))], ChunkSettings()))
    question = "What is the release code for night departures?"
    found = search(kb, question, top_k=4)
    assert found.passages[0].citation == "handbook.pdf, page 2"
    built = arena.requests(
        arena.Conversation(), question, found.passages, ["base", "rag"], settings.system_prompt
    )
    assert "(Source: handbook.pdf, page 2)" in built["rag"].messages[-1]["content"]
    streams = arena.ask(chat, built, SamplingParams(temperature=0.0, max_new_tokens=48))
    answers = {key: stream.read().text for key, stream in streams.items()}
    assert "BLUE-HARBOR-42" in answers["rag"], answers
    assert "BLUE-HARBOR-42" not in answers["base"], answers

"""The arena with the real default models: RAG answers from an uploaded document."""

import pytest

from core.answering import round as question_round
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.store import KnowledgeStore
from core.model import loading
from core.model.chat import SamplingParams
from core.model.local import HFChatModel
from core.settings import Settings
from tests.support.documents import pdf_bytes

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
    chat = HFChatModel(loading.load_chat_model(settings))
    kb = KnowledgeStore(settings, loading.load_embeddings(settings)).create("Harbour")
    list(ingest(kb, [UploadedFile("handbook.pdf", pdf_bytes(HANDBOOK))], ChunkSettings()))
    question = "What is the release code for night departures?"
    asked = question_round.prepare(
        question, ["base", "rag"], system_prompt=settings.system_prompt, kb=kb, top_k=4
    )
    assert asked.passages[0].citation == "handbook.pdf, page 2"
    # the sentence read carries the number of its passage, which the sources list shows with
    # its file and page
    assert "BLUE-HARBOR-42. [1]" in asked.requests["rag"].messages[-1]["content"]
    question_round.start(chat, [asked], SamplingParams(temperature=0.0, max_new_tokens=48))
    exchange = question_round.finish(asked, question_round.read_all(asked))
    answers = {key: answer.text for key, answer in exchange.answers.items()}
    assert "BLUE-HARBOR-42" in answers["rag"], answers
    assert "BLUE-HARBOR-42" not in answers["base"], answers

"""A studio worth sharing, for the Share tests: a knowledge base of two documents, an adapter, a
saved arena conversation and an evaluation report."""

from __future__ import annotations

from typing import Any

from core import adapters, arena, evaluate
from core.evalset import EvalItem
from core.generate import SamplingParams
from core.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge import KnowledgeStore
from core.settings import Settings
from tests.fakes import FakeChatModel
from tests.training import trained

HANDBOOK = (
    b"Harbour handbook.\n\nThe release code for night departures is BLUE-HARBOR-42.\n\n"
    b"Refunds are possible within 45 days of the booking.\n\nThe harbour master is Ingrid."
)
RULES = b"# Rules\n\nFuel is sold on the north pier.\n\nWaste oil goes into the green tanks."


def fill(settings: Settings, embeddings: Any) -> dict[str, str]:
    """Fill the studio of `settings`; the ids of what it made."""
    kb = KnowledgeStore(settings, embeddings).create("Harbour")
    files = [UploadedFile("handbook.txt", HANDBOOK), UploadedFile("rules.md", RULES)]
    list(ingest(kb, files, ChunkSettings(120, 10)))
    run_id = trained(settings, "Harbour voice")
    conversation = arena.Conversation(adapter=run_id, knowledge_base="Harbour")
    conversation.exchanges.append(
        arena.Exchange("What is the code?", [], 0.01, {"rag": arena.ModeAnswer("BLUE-HARBOR-42")})
    )
    arena.save(settings, conversation)
    fake = FakeChatModel(
        [lambda r: "BLUE-HARBOR-42" if "BLUE" in r.messages[-1]["content"] else "I do not know."]
    )
    report = evaluate.new_report(
        settings,
        fake,
        [EvalItem("What is the release code?", "BLUE-HARBOR-42")],
        adapter=adapters.get(settings, run_id),
        kb=kb,
        params=SamplingParams(0.0, 1.0, 16),
        name="Harbour check",
    )
    evaluate.run(settings, fake, report, kb)
    return {"run_id": run_id, "conversation": conversation.id, "report": report.id}

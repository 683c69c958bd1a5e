"""A studio worth sharing, for the Share tests: a knowledge base of two documents, an adapter, a
saved arena conversation and an evaluation report."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

from core.answering import conversations
from core.evaluation import runner
from core.evaluation.questions import EvalItem
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.store import KnowledgeStore
from core.model.chat import SamplingParams
from core.settings import Settings
from core.sharing import export
from core.sharing.bundle import MANIFEST, write_zip
from core.training import adapters
from tests.support.fakes import FakeChatModel
from tests.support.training import trained

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
    conversation = conversations.Conversation(adapter=run_id, knowledge_base="Harbour")
    conversation.exchanges.append(
        conversations.Exchange(
            "What is the code?", [], 0.01, {"rag": conversations.ModeAnswer("BLUE-HARBOR-42")}
        )
    )
    conversations.save(settings, conversation)
    fake = FakeChatModel(
        [lambda r: "BLUE-HARBOR-42" if "BLUE" in r.messages[-1]["content"] else "I do not know."]
    )
    report = runner.new_report(
        settings,
        fake,
        [EvalItem("What is the release code?", "BLUE-HARBOR-42")],
        adapter=adapters.get(settings, run_id),
        kb=kb,
        params=SamplingParams(0.0, 1.0, 16),
        name="Harbour check",
    )
    runner.run(settings, fake, report, kb)
    return {"run_id": run_id, "conversation": conversation.id, "report": report.id}


QUESTIONS = ["release code for night departures", "where is fuel sold", "refund period"]


def export_studio(
    settings: Settings, knowledge: KnowledgeStore, studio: dict, target: Path
) -> Path:
    choice = export.ExportChoice(
        knowledge_bases=["Harbour"],
        adapters=[studio["run_id"]],
        conversations=[studio["conversation"]],
        evaluations=[studio["report"]],
    )
    return export.export_bundle(settings, knowledge, choice, target)


def other_studio(settings: Settings, tmp_path: Path, fake_embeddings) -> tuple:  # type: ignore[no-untyped-def]
    elsewhere = settings.model_copy(update={"data_dir": tmp_path / "elsewhere"})
    return elsewhere, KnowledgeStore(elsewhere, fake_embeddings)


def weights_hash(folder: Path) -> str:
    return hashlib.sha256((folder / adapters.WEIGHTS_FILE).read_bytes()).hexdigest()


def everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def rebuilt(bundle: Path, target: Path, change) -> Path:  # type: ignore[no-untyped-def]
    """The bundle with its members changed by `change(manifest, members)`, hashes redone."""
    with zipfile.ZipFile(bundle) as archive:
        members = {n: archive.read(n) for n in archive.namelist() if n != MANIFEST}
        manifest = json.loads(archive.read(MANIFEST))
    change(manifest, members)
    write_zip(target, manifest, members)
    return target

"""The start-up repair: knowledge bases missing passages are rebuilt from their stored files,
with events a page can show; a read-only studio only reports; a damaged store set aside is said."""

from core.knowledge import repair
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.store import KnowledgeStore
from tests.support.restart import forget_chroma_clients

CHUNKS = ChunkSettings(200, 20)
DOCUMENTS = [
    UploadedFile("doors.txt", b"The door code is 4711."),
    UploadedFile("boats.md", b"# Boats\n\nMooring costs 12 euros a night."),
]


def filled(settings, fake_embeddings, names=("Handbook",)):  # type: ignore[no-untyped-def]
    store = KnowledgeStore(settings, fake_embeddings)
    for name in names:
        list(ingest(store.create(name), DOCUMENTS, CHUNKS))
    return store


def test_sound_knowledge_bases_need_no_repair(settings, fake_embeddings) -> None:
    assert list(repair.repair(filled(settings, fake_embeddings))) == []


def test_a_knowledge_base_that_lost_its_passages_is_rebuilt_with_progress(
    settings, fake_embeddings
) -> None:
    store = filled(settings, fake_embeddings, ("Handbook", "Sound"))
    kb = store.open("Handbook")
    gone = next(d for d in kb.documents() if d.name == "boats.md")
    kb.original_path(gone).unlink()
    kb.collection.delete(where={"doc_id": {"$ne": ""}})
    events = list(repair.repair(store))
    assert events[0] == repair.Rebuilding("Handbook")
    progress = [e for e in events if isinstance(e, repair.Progress)]
    assert progress and all(e.name == "Handbook" for e in progress)
    assert progress[-1].event.fraction == 1.0
    assert events[-1] == repair.Finding(
        "rebuilt", "Handbook", redone=1, total=2, lost=("boats.md",)
    )
    assert store.open("Handbook").missing_passages() == 0


def test_a_read_only_studio_reports_and_writes_nothing(settings, fake_embeddings) -> None:
    store = filled(settings, fake_embeddings)
    store.open("Handbook").collection.delete(where={"doc_id": {"$ne": ""}})
    read_only = KnowledgeStore(settings.model_copy(update={"read_only": True}), fake_embeddings)
    assert list(repair.repair(read_only)) == [repair.Finding("incomplete", "Handbook")]
    assert read_only.open("Handbook").passage_count() == 0


def test_a_damaged_store_set_aside_is_the_first_finding(settings, fake_embeddings) -> None:
    filled(settings, fake_embeddings)
    forget_chroma_clients()
    (settings.data_dir / "chroma" / "chroma.sqlite3").write_bytes(b"not a database" * 1000)
    events = list(repair.repair(KnowledgeStore(settings, fake_embeddings)))
    findings = [e for e in events if isinstance(e, repair.Finding)]
    assert findings[0].kind == "set_aside" and "chroma-damaged-" in findings[0].folder
    assert findings[1] == repair.Finding("rebuilt", "Handbook", redone=2, total=2)
    forget_chroma_clients()

"""A read-only studio writes nothing: every core entry point runs on a read-only data folder, which
afterwards is the same byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from core.answering import conversations
from core.errors import KnowledgeBaseError, StudioError
from core.evaluation import runner
from core.knowledge import adding, chroma
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest, rebuild, recover
from core.knowledge.retrieve import search
from core.knowledge.store import DocumentRecord, KnowledgeStore
from core.sharing import importing
from core.training import adapters, jobs
from tests.support.restart import forget_chroma_clients
from tests.support.sharing import fill


def fingerprint(folder: Path, chroma_by_content: bool = True) -> dict[str, str]:
    """Every file under `folder` with a hash of its bytes; Chroma's own files by what they hold
    (Chroma folds its write log into its index files whenever it opens them, even to read)."""
    found = {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not (chroma_by_content and p.is_relative_to(folder / "chroma"))
    }
    if not chroma_by_content:
        return found
    client = chroma.chroma_client(str(folder / "chroma"), read_only=True)
    for collection in client.list_collections():
        held = collection.get(include=["documents", "metadatas", "embeddings"])
        rows = sorted(
            json.dumps([i, d, m, [float(x) for x in e]], sort_keys=True)
            for i, d, m, e in zip(
                held["ids"], held["documents"], held["metadatas"], held["embeddings"], strict=True
            )
        )
        found[f"chroma:{collection.name}"] = hashlib.sha256("".join(rows).encode()).hexdigest()
    forget_chroma_clients()
    return found


def test_every_entry_point_of_a_read_only_studio_leaves_its_folder_byte_for_byte(
    settings, fake_embeddings, tmp_path, monkeypatch
) -> None:
    made = fill(settings, fake_embeddings)
    kb = KnowledgeStore(settings, fake_embeddings).open("Harbour")
    # A document a writer left half-done: a writable studio would redo it.
    [record, *_] = kb.documents()
    kb.catalog.add_pending(
        DocumentRecord(**{**record.__dict__, "owner": f"{os.uname().nodename}:999999"})
    )
    kb.store.delete(where={"doc_id": record.doc_id})
    # And documents a stopped studio was adding: a writable studio would pick them up again.
    with monkeypatch.context() as stopped:
        stopped.setattr(adding, "_enqueue", lambda store, job_id: None)
        job = adding.start(
            KnowledgeStore(settings, fake_embeddings),
            "Harbour",
            [UploadedFile("later.txt", b"Added later.")],
            ChunkSettings(120, 10),
        )
    job_file = adding.jobs_dir(settings) / job.id / adding.JOB_FILE
    dead = f"{os.uname().nodename}:999999"
    job_file.write_text(job.model_copy(update={"owner": dead}).model_dump_json())
    del kb
    forget_chroma_clients()
    before = fingerprint(settings.data_dir)

    ro = settings.model_copy(update={"read_only": True})
    store = KnowledgeStore(ro, fake_embeddings)
    kb = store.open("Harbour")
    chunks = ChunkSettings(120, 10)
    reads = [
        store.names,
        kb.documents,
        kb.passage_count,
        kb.missing_passages,
        lambda: search(kb, "release code"),
        lambda: recover(kb, chunks),
        lambda: adapters.list_adapters(ro),
        lambda: adapters.get(ro, made["run_id"]),
        lambda: adapters.zip_bytes(ro, made["run_id"]),
        lambda: runner.list_reports(ro),
        lambda: runner.load(ro, made["report"]),
        lambda: conversations.conversation_ids(ro),
        lambda: conversations.load(ro, made["conversation"]),
        lambda: conversations.leaderboard(ro),
        lambda: jobs.all_runs(ro),
        lambda: adding.resume(store),
        lambda: adding.jobs_for(ro, "Harbour"),
    ]
    for read in reads:
        read()
    assert recover(kb, chunks) == [] and kb.documents()[0].status == "pending"
    changes = [
        lambda: store.create("New"),
        lambda: store.delete("Harbour"),
        lambda: store.rename("Harbour", "Other"),
        lambda: kb.delete_document(record.doc_id),
        lambda: list(ingest(kb, [UploadedFile("x.txt", b"new text")], chunks)),
        lambda: list(rebuild(kb, chunks)),
        lambda: adapters.rename(ro, made["run_id"], "Mine"),
        lambda: adapters.delete(ro, made["run_id"]),
        lambda: jobs.delete_run(ro, made["run_id"]),
        lambda: runner.delete(ro, made["report"]),
        lambda: runner.save(ro, runner.load(ro, made["report"])),
        lambda: conversations.save(ro, conversations.Conversation()),
        lambda: importing.import_bundle(ro, store, tmp_path / "none.zip"),
        lambda: adding.start(store, "Harbour", [UploadedFile("y.txt", b"more")], chunks),
    ]
    for change in changes:
        with pytest.raises(StudioError, match="read-only demo"):
            change()
    kb = store = None  # type: ignore[assignment]
    forget_chroma_clients()
    assert fingerprint(settings.data_dir) == before


def test_a_read_only_studio_reports_a_damaged_index_and_leaves_it_where_it_is(
    settings, fake_embeddings
) -> None:
    fill(settings, fake_embeddings)
    forget_chroma_clients()
    chroma_dir = settings.data_dir / "chroma"
    (chroma_dir / "chroma.sqlite3").write_bytes(os.urandom(64_000))
    before = fingerprint(settings.data_dir, chroma_by_content=False)
    ro = settings.model_copy(update={"read_only": True})
    with pytest.raises(KnowledgeBaseError, match="could not be opened"):
        KnowledgeStore(ro, fake_embeddings).open("Harbour").passage_count()
    assert sorted(p.name for p in settings.data_dir.iterdir()) == sorted(
        {name.split("/")[0] for name in before}
    )
    assert fingerprint(settings.data_dir, chroma_by_content=False) == before
    forget_chroma_clients()

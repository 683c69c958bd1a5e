"""Faults: a training worker killed at chosen points, a full disk while saving an adapter or
adding documents, a damaged search index at start. Each ends in a plain message, loses nothing
that was already saved, and can be carried on.

(The Streamlit server killed during ingestion is in tests/e2e/test_faults_browser.py.)"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from core.knowledge import chroma
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest, rebuild
from core.knowledge.retrieve import search
from core.knowledge.store import KnowledgeStore
from core.training import adapters, jobs, run_folder, worker
from core.training.config import TrainConfig
from core.training.datasets import parse_dataset
from tests.support.restart import forget_chroma_clients
from tests.support.training import alpaca_rows, finished, hashes, wait_for

SMALL = TrainConfig(batch_size=4, epochs=2, eval_fraction=0.1, max_length=64)
# About 285 steps of the tiny model with a checkpoint every few dozen: long enough to be killed
# more than once on the way.
LONG = TrainConfig(batch_size=2, epochs=3, eval_fraction=0.05, max_length=64)
CHUNKS = ChunkSettings(200, 20)
DOCUMENTS = [
    UploadedFile(
        "doors.txt", b"The door code is KESTREL-7731. Visitors sign in at the gate. " * 30
    ),
    UploadedFile("boats.md", b"# Boats\nMooring costs 12 euros a night in the east basin. " * 30),
]


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def earlier(settings, stop_runs) -> tuple[str, dict[str, str]]:
    """A finished adapter, and the hashes of its files."""
    run = jobs.start(settings, parse_dataset("a.jsonl", alpaca_rows(40)), SMALL, name="Earlier")
    wait_for(run.folder, finished)
    return run.run_id, hashes(run.folder / run_folder.ADAPTER_DIR)


# -- the training worker killed ----------------------------------------------------------------
def training_past_a_checkpoint(status: jobs.RunStatus) -> bool:
    return status.state == "training" and bool(
        run_folder.read_status(status.folder).get("checkpoint_step")
    )


@pytest.mark.parametrize("seed", [7, 1234])
def test_a_worker_killed_at_chosen_points_is_interrupted_and_resumes_every_time(
    settings, earlier, seed: int
) -> None:
    """Two SIGKILLs per run, at points drawn from `seed`: while loading, training or saving a
    checkpoint, whatever the worker is doing then."""
    earlier_id, earlier_files = earlier
    points = random.Random(seed)
    run = jobs.start(settings, parse_dataset("b.jsonl", alpaca_rows(200)), LONG, name="Killed")
    for _kill in range(2):
        # Past at least one checkpoint (resuming needs one), then some steps or none further.
        first = wait_for(run.folder, training_past_a_checkpoint, timeout=180)
        target = first.step + points.randint(0, 40)
        wait_for(run.folder, lambda s, t=target: s.step >= t or not s.active, timeout=180)
        time.sleep(points.uniform(0, 0.5))
        os.kill(run_folder.read_status(run.folder)["pid"], signal.SIGKILL)
        status = wait_for(run.folder, lambda s: s.state == "interrupted", timeout=15)
        assert status.can_resume, status
        assert hashes(jobs.run_path(settings, earlier_id) / run_folder.ADAPTER_DIR) == earlier_files
        assert [a.name for a in adapters.list_adapters(settings)] == ["Earlier"]
        jobs.resume(settings, run.run_id)
    status = wait_for(run.folder, finished, timeout=300)
    assert status.state == "completed", status
    steps = [step for step, _ in status.train_loss]
    assert steps == sorted(set(steps)) and steps[-1] == status.total_steps  # no step twice
    assert sorted(a.name for a in adapters.list_adapters(settings)) == ["Earlier", "Killed"]
    assert hashes(jobs.run_path(settings, earlier_id) / run_folder.ADAPTER_DIR) == earlier_files


def test_a_worker_killed_before_its_first_checkpoint_can_be_started_again(
    settings, earlier
) -> None:
    earlier_id, earlier_files = earlier
    data = parse_dataset("b.jsonl", alpaca_rows(200))
    run = jobs.start(settings, data, LONG, name="Too early")
    wait_for(run.folder, lambda s: s.state in ("loading", "training"), timeout=60)
    os.kill(run_folder.read_status(run.folder)["pid"], signal.SIGKILL)
    status = wait_for(run.folder, lambda s: s.state == "interrupted", timeout=15)
    if not status.can_resume:  # no checkpoint yet: resuming is refused, starting again works
        with pytest.raises(Exception, match="no complete checkpoint"):
            jobs.resume(settings, run.run_id)
    assert hashes(jobs.run_path(settings, earlier_id) / run_folder.ADAPTER_DIR) == earlier_files
    again = jobs.start(settings, data, SMALL, name="Again")
    assert wait_for(again.folder, finished).state == "completed"


# -- a full disk ---------------------------------------------------------------------------------
def test_a_full_disk_while_saving_an_adapter_fails_plainly_and_keeps_the_others(
    settings, earlier, monkeypatch
) -> None:
    earlier_id, earlier_files = earlier
    from peft import PeftModel

    save = PeftModel.save_pretrained

    def fill_the_disk(self, folder, *args, **kwargs):
        if Path(folder).name == "adapter.partial":  # the final save: half the files, then full
            save(self, folder, *args, **kwargs)
            (Path(folder) / "adapter_model.safetensors").write_bytes(b"half")
            raise disk_full()
        return save(self, folder, *args, **kwargs)

    monkeypatch.setattr(PeftModel, "save_pretrained", fill_the_disk)
    run_dir = jobs.create(settings, parse_dataset("b.jsonl", alpaca_rows(40)), SMALL, name="Full")
    assert worker.run(run_dir) == "failed"
    status = jobs.read(run_dir)
    assert status.message == worker.DISK_FULL_HINT and "Traceback" not in status.message
    assert not (run_dir / "adapter.partial").exists()  # the half adapter gave its space back
    assert not (run_dir / run_folder.ADAPTER_DIR).exists()
    assert [a.name for a in adapters.list_adapters(settings)] == ["Earlier"]
    assert hashes(jobs.run_path(settings, earlier_id) / run_folder.ADAPTER_DIR) == earlier_files


def test_a_full_disk_while_adding_documents_fails_plainly_and_loses_nothing(
    knowledge, monkeypatch
) -> None:
    kb = knowledge.create("Handbook")
    list(ingest(kb, DOCUMENTS[:1], CHUNKS))
    before = (kb.passage_count(), [d.name for d in kb.documents()], hashes(kb.files_dir))
    found_before = search(kb, "door code", 1).passages[0].text

    # 1. The disk fills while the original file is stored.
    write_bytes = Path.write_bytes

    def full_for_partials(self, data):
        if self.suffix == ".partial":
            write_bytes(self, data[: len(data) // 2])
            raise disk_full()
        return write_bytes(self, data)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_bytes", full_for_partials)
        events = list(ingest(kb, DOCUMENTS[1:], CHUNKS))
    # 2. The disk fills while Chroma writes the passages (after its first batch).
    add = kb.store.add_documents
    batches = []

    def full_after_one_batch(documents, **kwargs):
        batches.append(len(documents))
        if len(batches) > 1:
            raise disk_full()
        return add(documents, **kwargs)

    big = UploadedFile("big.txt", b"Lighthouse keepers log the weather every hour. " * 600)
    with monkeypatch.context() as patch:
        patch.setattr(kb.store, "add_documents", full_after_one_batch)
        events += list(ingest(kb, [big], CHUNKS))

    failed = [e for e in events if e.status == "failed"]
    assert [e.file_name for e in failed] == ["boats.md", "big.txt"]
    assert all(e.message.startswith("The disk is full") for e in failed), failed
    assert len(batches) == 2  # the second document really was half written when the disk filled
    after = (kb.passage_count(), [d.name for d in kb.documents()], hashes(kb.files_dir))
    assert after == before  # no half document, no half file, nothing of the earlier one lost
    assert search(kb, "door code", 1).passages[0].text == found_before

    # Space is back: the same files go in whole.
    events = list(ingest(kb, [DOCUMENTS[1], big], CHUNKS))
    assert [e.status for e in events if e.status in ("added", "failed")] == ["added", "added"]
    assert kb.missing_passages() == 0


# -- a damaged search index at start -------------------------------------------------------------
def garbage(chroma: Path) -> None:
    (chroma / "chroma.sqlite3").write_bytes(os.urandom(64_000))


def truncated(chroma: Path) -> None:
    database = chroma / "chroma.sqlite3"
    database.write_bytes(database.read_bytes()[:20_000])


def deleted(chroma: Path) -> None:
    shutil.rmtree(chroma)


@pytest.mark.parametrize("damage", [garbage, truncated, deleted])
def test_a_damaged_search_index_is_set_aside_and_rebuilt_from_the_stored_files(
    settings, fake_embeddings, damage
) -> None:
    store = KnowledgeStore(settings, fake_embeddings)
    kb = store.create("Handbook")
    list(ingest(kb, DOCUMENTS, CHUNKS))
    questions = ["door code", "mooring price"]
    before = [[(p.text, p.citation) for p in search(kb, q, 2).passages] for q in questions]
    passages = kb.passage_count()
    del kb, store
    forget_chroma_clients()
    chroma_dir = settings.data_dir / "chroma"
    damage(chroma_dir)

    kb = KnowledgeStore(settings, fake_embeddings).open("Handbook")
    assert kb.missing_passages() == passages
    aside = chroma.damage_set_aside(settings)
    if damage is deleted:
        assert aside is None
    else:  # kept for inspection, never deleted
        assert aside is not None and (aside / "chroma.sqlite3").exists()
    events = list(rebuild(kb, CHUNKS))
    assert [e.status for e in events if e.status in ("redone", "failed")] == ["redone"] * 2
    assert kb.missing_passages() == 0 and kb.passage_count() == passages
    after = [[(p.text, p.citation) for p in search(kb, q, 2).passages] for q in questions]
    assert after == before
    assert [d.status for d in kb.documents()] == ["complete", "complete"]


def test_a_document_whose_stored_file_is_gone_is_named_in_the_rebuild(
    settings, fake_embeddings
) -> None:
    store = KnowledgeStore(settings, fake_embeddings)
    kb = store.create("Handbook")
    list(ingest(kb, DOCUMENTS, CHUNKS))
    gone = next(d for d in kb.documents() if d.name == "boats.md")
    kb.original_path(gone).unlink()
    kb.collection.delete(where={"doc_id": {"$ne": ""}})  # the index lost everything
    events = [e for e in rebuild(kb, CHUNKS) if e.status in ("redone", "failed")]
    assert {(e.file_name, e.status) for e in events} == {
        ("doors.txt", "redone"),
        ("boats.md", "failed"),
    }
    assert "add it again" in next(e.message for e in events if e.status == "failed")
    assert [d.name for d in kb.documents()] == ["doors.txt"] and kb.missing_passages() == 0


@pytest.mark.parametrize("stop_after", ["started", "progress"])
def test_a_rebuild_abandoned_mid_document_loses_no_record(
    settings, fake_embeddings, monkeypatch, stop_after
) -> None:
    import core.knowledge.ingest as ingest_module

    store = KnowledgeStore(settings, fake_embeddings)
    kb = store.create("Handbook")
    long = UploadedFile("long.txt", ("A sentence of the long manual. " * 200).encode())
    list(ingest(kb, [*DOCUMENTS, long], CHUNKS))
    names = sorted(d.name for d in kb.documents())
    passages = kb.passage_count()
    monkeypatch.setattr(ingest_module, "_BATCH", 2)  # several progress steps per document
    # A rerun abandons the generator (what Streamlit does to a script that is re-run) while the
    # first document is being redone.
    events = rebuild(kb, CHUNKS)
    for event in events:
        if event.status == stop_after:
            break
    events.close()
    assert sorted(d.name for d in kb.documents()) == names  # every document is still listed...
    assert all(kb.original_path(d).exists() for d in kb.documents())
    redone = ingest_module.recover(kb, CHUNKS)  # ...and what was cut off is redone from its file
    assert [d.status for d in kb.documents()] == ["complete"] * len(names)
    assert len(redone) <= 1 and all(e.status == "redone" for e in redone)
    assert kb.passage_count() == passages and kb.missing_passages() == 0

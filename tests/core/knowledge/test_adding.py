"""Adding documents in the background: the job outlives its page run, reports every file's
outcome, can be cancelled from anywhere, and is picked up again after a restart."""

from __future__ import annotations

import json
import os
import threading

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings

from core.errors import ReadOnlyError
from core.knowledge import adding
from core.knowledge.ingest import ChunkSettings, UploadedFile
from core.knowledge.store import KnowledgeStore
from tests.support.documents import pdf_bytes, png_bytes

SMALL = ChunkSettings(chunk_size=200, chunk_overlap=20)
DEAD = f"{os.uname().nodename}:999999"  # a process id that is not running
WAIT_S = 60


@pytest.fixture(autouse=True)
def no_job_outlives_its_test(settings):  # type: ignore[no-untyped-def]
    yield
    for job in adding._all(settings):
        adding.cancel(settings, job.id)
    for job in adding._all(settings):
        assert not adding.alive(adding.wait(settings, job.id, WAIT_S)), job


def long_text(entries: int) -> bytes:
    return "".join(
        f"Entry {n}: wind from the west, sea state {n % 7}. " for n in range(entries)
    ).encode()


class GatedEmbeddings(Embeddings):
    """Fake vectors; every embedding call after the first waits until the test opens the gate."""

    def __init__(self) -> None:
        self.inner = DeterministicFakeEmbedding(size=32)
        self.calls = 0
        self.gate = threading.Event()
        self.reached = threading.Event()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        if self.calls > 1:
            self.reached.set()
            assert self.gate.wait(WAIT_S), "the gate was never opened"
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


def stopped_job(knowledge, settings, monkeypatch, uploads=None, **changes):  # type: ignore[no-untyped-def]
    """A job queued by a studio that stopped before working on it, its file then changed by
    `changes`: (the job as started, its job file)."""
    knowledge.create("Harbor")
    with monkeypatch.context() as stopped:
        stopped.setattr(adding, "_enqueue", lambda store, job_id: None)
        uploads = uploads or [UploadedFile("a.txt", b"Some text.")]
        job = adding.start(knowledge, "Harbor", uploads, SMALL)
    path = adding.jobs_dir(settings) / job.id / adding.JOB_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return job, path


def end(path) -> None:  # type: ignore[no-untyped-def]
    """A job left active on purpose, marked ended (the check after each test looks for those)."""
    path.write_text(json.dumps({**json.loads(path.read_text()), "state": "cancelled"}))


def test_files_are_added_in_the_background_each_with_its_outcome(knowledge, settings) -> None:
    kb = knowledge.create("Harbor")
    files = [
        UploadedFile("handbook.pdf", pdf_bytes(["Welcome.", "The release code is BLUE-42."])),
        UploadedFile("photo.pdf", png_bytes()),
        UploadedFile("../../notes.md", b"# Notes\nThe lamp was automated in 1994."),
    ]
    job = adding.start(knowledge, "Harbor", files, SMALL)
    assert job.state == "waiting" and [f.name for f in job.files][2] == "notes.md"
    done = adding.wait(settings, job.id, WAIT_S)
    assert done.state == "done" and done.fraction == 1.0 and done.finished
    assert [(f.name, f.state) for f in done.files] == [
        ("handbook.pdf", "added"),
        ("photo.pdf", "failed"),
        ("notes.md", "added"),
    ]
    assert "not a PDF" in done.files[1].message and done.files[0].passages == 2
    assert sorted(d.name for d in kb.documents()) == ["handbook.pdf", "notes.md"]
    folder = adding.jobs_dir(settings) / job.id
    assert sorted(p.name for p in folder.iterdir()) == ["job.json"]  # the uploads are gone
    assert adding.busy(settings, "Harbor") is False


def test_jobs_wait_their_turn_and_all_finish(knowledge, settings) -> None:
    knowledge.create("Harbor")
    jobs = [
        adding.start(knowledge, "Harbor", [UploadedFile(f"{n}.txt", f"Note {n}.".encode())], SMALL)
        for n in range(3)
    ]
    ended = [adding.wait(settings, job.id, WAIT_S) for job in jobs]
    assert [job.state for job in ended] == ["done"] * 3
    assert len(knowledge.open("Harbor").documents()) == 3
    assert [job.id for job in adding.jobs_for(settings, "Harbor")] == [job.id for job in jobs]


def test_a_cancelled_job_takes_back_the_file_it_was_adding_and_skips_the_rest(
    settings, tmp_path
) -> None:
    embeddings = GatedEmbeddings()
    store = KnowledgeStore(settings, embeddings)
    kb = store.create("Logbook")
    files = [
        UploadedFile("first.txt", b"The first keeper lit the lamp at dusk."),
        UploadedFile("logbook.txt", long_text(400)),  # many batches of passages
        UploadedFile("last.md", b"# Last\nThe lamp was automated in 1994."),
    ]
    job = adding.start(store, "Logbook", files, SMALL)
    assert embeddings.reached.wait(WAIT_S)  # first.txt is in; logbook.txt is being embedded
    adding.cancel(settings, job.id)
    embeddings.gate.set()
    ended = adding.wait(settings, job.id, WAIT_S)
    assert ended.state == "cancelled"
    assert [(f.name, f.state) for f in ended.files] == [
        ("first.txt", "added"),
        ("logbook.txt", "cancelled"),
        ("last.md", "cancelled"),
    ]
    assert "cancelled" in ended.files[2].message
    assert [d.name for d in kb.documents()] == ["first.txt"]  # no half logbook, no record of it
    assert kb.passage_count() == 1
    assert len(list(kb.files_dir.iterdir())) == 1  # and no stored original nobody lists


def test_a_job_of_a_studio_that_stopped_is_picked_up_again(
    knowledge, settings, monkeypatch
) -> None:
    files = [UploadedFile(f"{n}.txt", f"Note number {n}.".encode()) for n in range(3)]
    job, _ = stopped_job(knowledge, settings, monkeypatch, files, owner=DEAD, state="adding")
    assert not adding.alive(adding.read(settings, job.id))

    assert adding.resume(knowledge) == [job.id]
    assert adding.resume(knowledge) == []  # claimed once
    ended = adding.wait(settings, job.id, WAIT_S)
    assert ended.state == "done" and ended.resumed
    assert [f.state for f in ended.files] == ["added"] * 3
    assert len(knowledge.open("Harbor").documents()) == 3


def test_a_job_of_a_live_studio_is_left_to_it(knowledge, settings, monkeypatch) -> None:
    live = f"{os.uname().nodename}:1"  # init never ends
    _, path = stopped_job(knowledge, settings, monkeypatch, owner=live)
    assert adding.resume(knowledge) == []
    assert adding.busy(settings, "Harbor")
    end(path)


def test_a_read_only_studio_neither_adds_nor_resumes(knowledge, settings, monkeypatch) -> None:
    _, path = stopped_job(knowledge, settings, monkeypatch, owner=DEAD)
    before = path.read_bytes()
    read_only = KnowledgeStore(
        settings.model_copy(update={"read_only": True}), knowledge.embeddings
    )
    assert adding.resume(read_only) == []
    assert path.read_bytes() == before
    with pytest.raises(ReadOnlyError):
        adding.start(read_only, "Harbor", [UploadedFile("b.txt", b"More.")], SMALL)
    end(path)


@pytest.mark.parametrize(
    "change",
    [
        {"id": "../../outside"},
        {"files": [{"name": "a.txt", "state": "exploded"}]},
        {"knowledge_base": 12},
        {"extra": "field"},
    ],
)
def test_a_damaged_or_forged_job_file_is_ignored(knowledge, settings, monkeypatch, change) -> None:
    stopped_job(knowledge, settings, monkeypatch, owner=DEAD, **change)
    assert adding.jobs_for(settings, "Harbor") == []
    assert adding.resume(knowledge) == []

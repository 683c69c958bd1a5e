"""Adding documents in the background: a job that outlives the page run that started it.

The page hands the uploads over (`start`): they are written to the job's folder first, so that
a restart can pick the job up again (`resume`). One thread per studio process works through the
jobs in the order they came, file by file, through `core.knowledge.ingest`. Any session reads a
job's progress from its folder (`jobs_for`) and can cancel it (`cancel`), from this process or from
another studio process on the same data folder.

data/adding/<job id>/
    job.json        the job and every file's outcome (AddJob), replaced atomically
    0000.upload ... the uploaded files, under names we made; removed once the job ends
    cancel          present when somebody asked to stop
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core import ids
from core.errors import StudioError
from core.files import atomic_write_json
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest, recover
from core.knowledge.reading import display_name
from core.knowledge.store import KnowledgeStore
from core.processes import process_alive, this_process
from core.settings import Settings, check_writable
from core.typed import parse

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
CANCEL_FILE = "cancel"
KEEP_FINISHED = 20  # finished jobs whose outcome stays readable; older ones are removed
SAVE_EVERY_S = 0.5  # progress is written at most this often (outcomes always at once)

FileState = Literal[
    "waiting", "reading", "added", "replaced", "skipped", "failed", "redone", "cancelled"
]
JobState = Literal["waiting", "adding", "done", "cancelled", "failed"]
FINAL_FILE_STATES = frozenset({"added", "replaced", "skipped", "failed", "redone", "cancelled"})
ACTIVE_STATES = frozenset({"waiting", "adding"})


class FileEntry(BaseModel):
    """One file of a job and what became of it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=200)
    state: FileState = "waiting"
    message: str = Field(default="", max_length=2000)
    passages: int = Field(default=0, ge=0)


class AddJob(BaseModel):
    """A batch of files being added to one knowledge base; read back from disk, so typed."""

    model_config = ConfigDict(extra="forbid")

    id: str
    knowledge_base: str = Field(max_length=200)
    chunk_size: int = Field(ge=1)
    chunk_overlap: int = Field(ge=0)
    files: list[FileEntry] = Field(max_length=10_000)
    state: JobState = "waiting"
    fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    message: str = Field(default="", max_length=2000)
    owner: str = Field(max_length=300)
    created: float
    finished: float | None = None
    resumed: bool = False

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return ids.check_id(value, "job")

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def finished_files(self) -> int:
        return sum(1 for f in self.files if f.state in FINAL_FILE_STATES)

    @property
    def chunking(self) -> ChunkSettings:
        return ChunkSettings(self.chunk_size, self.chunk_overlap)


def jobs_dir(settings: Settings) -> Path:
    return settings.data_dir / "adding"


def _folder(settings: Settings, job_id: str) -> Path:
    return jobs_dir(settings) / ids.check_id(job_id, "job")


def _upload_path(folder: Path, index: int) -> Path:
    return folder / f"{index:04d}.upload"


def _save(folder: Path, job: AddJob) -> None:
    atomic_write_json(folder / JOB_FILE, job.model_dump())


def read(settings: Settings, job_id: str) -> AddJob:
    folder = _folder(settings, job_id)
    return parse(AddJob, json.loads((folder / JOB_FILE).read_text()), "A document job")


def _all(settings: Settings) -> Iterator[AddJob]:
    root = jobs_dir(settings)
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not ids.is_id(folder.name):
            continue
        with contextlib.suppress(OSError, ValueError, StudioError):  # half made or damaged
            job = read(settings, folder.name)
            if job.id == folder.name:
                yield job


# -- this process's worker -----------------------------------------------------------------------
_queue: queue.Queue[tuple[KnowledgeStore, str]] = queue.Queue()
_queued: set[str] = set()  # jobs of this process not finished yet (waiting or being worked on)
_cancelled: set[str] = set()
_lock = threading.Lock()
_worker: threading.Thread | None = None


def _enqueue(store: KnowledgeStore, job_id: str) -> None:
    global _worker
    with _lock:
        _queued.add(job_id)
        _queue.put((store, job_id))
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_work, name="adding", daemon=True)
            _worker.start()


def _work() -> None:
    while True:
        store, job_id = _queue.get()
        try:
            _run(store, job_id)
        except Exception:  # the job is marked failed below; the worker goes on with the next
            log.exception("adding documents (job %s) failed", job_id)
            with contextlib.suppress(Exception):
                _fail(store.settings, job_id)
        finally:
            with _lock:
                _queued.discard(job_id)
                _cancelled.discard(job_id)


def _queued_here(job_id: str) -> bool:
    with _lock:
        return job_id in _queued


def alive(job: AddJob) -> bool:
    """Whether somebody is still working on an active job (this process or a live other one)."""
    if not job.active:
        return False
    if job.owner == this_process():
        return _queued_here(job.id)
    return process_alive(job.owner)


# -- what the page calls -------------------------------------------------------------------------
def start(
    store: KnowledgeStore, kb_name: str, files: Sequence[UploadedFile], chunking: ChunkSettings
) -> AddJob:
    """Queue `files` for adding to the knowledge base `kb_name`; returns at once."""
    settings = store.settings
    check_writable(settings, "Adding documents")
    store.open(kb_name)  # a missing knowledge base, or one of another search model, is said now
    _prune(settings)
    job = AddJob(
        id=ids.new_id(),
        knowledge_base=kb_name,
        chunk_size=chunking.chunk_size,
        chunk_overlap=chunking.chunk_overlap,
        files=[FileEntry(name=display_name(upload.name)) for upload in files],
        message="Waiting for the documents before these to be added",
        owner=this_process(),
        created=time.time(),
    )
    root = jobs_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{job.id}.partial"
    partial.mkdir()
    try:
        for index, upload in enumerate(files):  # names we made: the uploaded name is no path
            _upload_path(partial, index).write_bytes(upload.data)
        _save(partial, job)
        partial.rename(root / job.id)  # the job exists whole, or not at all
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _enqueue(store, job.id)
    return job


def jobs_for(settings: Settings, kb_name: str) -> list[AddJob]:
    """This knowledge base's jobs, oldest first: those still running and the recent ones."""
    return sorted(
        (job for job in _all(settings) if job.knowledge_base == kb_name),
        key=lambda job: job.created,
    )


def busy(settings: Settings, kb_name: str) -> bool:
    """Whether documents are being added to `kb_name` right now (by any live studio process)."""
    return any(alive(job) for job in jobs_for(settings, kb_name))


def cancel(settings: Settings, job_id: str) -> None:
    """Ask a job to stop: the file being added is rolled back, the ones after it are left out."""
    folder = _folder(settings, job_id)
    if folder.is_dir():
        (folder / CANCEL_FILE).touch()
    with _lock:
        _cancelled.add(job_id)


def resume(store: KnowledgeStore) -> list[str]:
    """Pick up jobs whose studio process stopped (a restart, a crash) from their stored uploads.
    Each one is claimed by exactly one process; a read-only studio leaves them alone."""
    settings = store.settings
    if settings.read_only or not jobs_dir(settings).is_dir():
        return []
    claimed = []
    with (jobs_dir(settings) / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for job in _all(settings):
            if not job.active or job.owner == this_process() or process_alive(job.owner):
                continue
            job.owner, job.resumed = this_process(), True
            job.message = "Picking up where the studio stopped"
            _save(_folder(settings, job.id), job)
            claimed.append(job.id)
    for job_id in claimed:
        _enqueue(store, job_id)
    return claimed


def wait(settings: Settings, job_id: str, timeout_s: float) -> AddJob:
    """The job once it has ended, or as it is when `timeout_s` ran out (tests, scripts)."""
    deadline = time.monotonic() + timeout_s
    job = read(settings, job_id)
    while alive(job) and time.monotonic() < deadline:
        time.sleep(0.05)
        job = read(settings, job_id)
    return job


# -- the work --------------------------------------------------------------------------------------
def cancel_asked(settings: Settings, job_id: str) -> bool:
    """Whether somebody asked this job to stop (in this process, or any through its folder)."""
    with _lock:
        if job_id in _cancelled:
            return True
    return (_folder(settings, job_id) / CANCEL_FILE).exists()


def _finish(folder: Path, job: AddJob, state: JobState, why: str = "") -> None:
    for entry in job.files:
        if entry.state not in FINAL_FILE_STATES:
            entry.state = "cancelled" if state == "cancelled" else "failed"
            entry.message = why
    job.state, job.finished, job.fraction = state, time.time(), 1.0
    job.message = {"done": "Done", "cancelled": "Cancelled", "failed": why}.get(state, why)
    _save(folder, job)
    for upload in folder.glob("*.upload"):  # the stored originals live on in the knowledge base
        upload.unlink(missing_ok=True)


def _fail(settings: Settings, job_id: str) -> None:
    folder = _folder(settings, job_id)
    job = read(settings, job_id)
    if job.active:
        _finish(folder, job, "failed", "Not added: the studio met an unexpected problem.")


def _run(store: KnowledgeStore, job_id: str) -> None:
    settings = store.settings
    folder = _folder(settings, job_id)
    job = read(settings, job_id)
    if cancel_asked(settings, job_id):
        _finish(folder, job, "cancelled", "Not added: adding was cancelled.")
        return
    try:
        kb = store.open(job.knowledge_base)
    except StudioError as error:
        _finish(folder, job, "failed", f"Not added: {error}")
        return
    job.state, job.message = "adding", "Starting"
    _save(folder, job)
    todo = [i for i, entry in enumerate(job.files) if entry.state not in FINAL_FILE_STATES]
    if job.resumed:  # the file the stopped process was writing is redone from its original
        redone = {event.file_name: event for event in recover(kb, job.chunking)}
        for index in list(todo):
            event = redone.get(job.files[index].name)
            if event is not None and event.status == "redone":
                job.files[index].state = "added"
                job.files[index].message = f"Added after the restart: {event.passages} passages."
                job.files[index].passages = event.passages
                todo.remove(index)
    uploads = [UploadedFile(job.files[i].name, _upload_path(folder, i).read_bytes()) for i in todo]
    before = len(job.files) - len(todo)
    events = ingest(kb, uploads, job.chunking)
    position, saved = -1, 0.0
    cancelled = False
    try:
        for event in events:
            if event.status == "started":
                position += 1
                job.files[todo[position]].state = "reading"
            elif event.status in FINAL_FILE_STATES and position >= 0:
                entry = job.files[todo[position]]
                entry.state, entry.message, entry.passages = (
                    cast(FileState, event.status),  # one of FINAL_FILE_STATES
                    event.message,
                    event.passages,
                )
            job.fraction = min(1.0, (before + event.fraction * len(todo)) / len(job.files))
            job.message = event.message
            now = time.monotonic()
            if event.status != "progress" or now - saved >= SAVE_EVERY_S:
                _save(folder, job)
                saved = now
            if cancel_asked(settings, job_id):
                cancelled = True
                break
    finally:
        events.close()  # abandoned mid-file: that file's passages and record are rolled back
    if cancelled:
        _finish(folder, job, "cancelled", "Not added: adding was cancelled.")
    else:
        _finish(folder, job, "done")


def _prune(settings: Settings) -> None:
    finished = sorted(
        (job for job in _all(settings) if not job.active), key=lambda job: job.created
    )
    for job in finished[:-KEEP_FINISHED] if len(finished) > KEEP_FINISHED else []:
        shutil.rmtree(_folder(settings, job.id), ignore_errors=True)

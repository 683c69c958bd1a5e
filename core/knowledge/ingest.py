"""Add documents to a knowledge base: validate, read, split, embed, store, one event at a time.

`ingest` is a generator of `IngestEvent`s, so a page can show each file arrive. One bad file
never stops the batch: it is reported as failed, with the reason, and the next one goes on.
A document is written as 'pending' in the catalog, its passages are added, then it is marked
'complete'; a crash in between is found by `recover` and the document redone from its stored file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from core.errors import DocumentError, is_disk_full
from core.knowledge.reading import display_name, extract, file_type_of
from core.knowledge.store import DocumentRecord, KnowledgeBase
from core.memory import release_freed_memory
from core.processes import process_alive, this_process
from core.settings import Settings, check_writable
from core.wording import plural

_BATCH = 64  # passages embedded and stored per step: small enough for steady progress
_active: set[str] = set()  # doc ids this process is writing right now
_active_lock = threading.Lock()

Status = Literal["started", "progress", "added", "replaced", "skipped", "failed", "redone"]


@dataclass(frozen=True)
class UploadedFile:
    """A file as the user gave it: its name is for display only, never a path."""

    name: str
    data: bytes


@dataclass(frozen=True)
class ChunkSettings:
    """How documents are cut into passages; the help texts are shown in the app."""

    chunk_size: int = field(
        default=800, metadata={"help": Settings.model_fields["chunk_size"].description}
    )
    chunk_overlap: int = field(
        default=100, metadata={"help": Settings.model_fields["chunk_overlap"].description}
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> ChunkSettings:
        return cls(settings.chunk_size, settings.chunk_overlap)


@dataclass(frozen=True)
class IngestEvent:
    """What happened to one file; `fraction` is the progress of the whole batch (0 to 1)."""

    file_name: str
    status: Status
    message: str
    fraction: float
    passages: int = 0
    pages: int = 0


@dataclass
class _Prepared:
    """A file read and split, ready to embed; or the reason it cannot be."""

    upload: UploadedFile
    name: str
    chunking: ChunkSettings
    file_type: str = ""
    content_hash: str = ""
    pages: int = 0
    chunks: list = field(default_factory=list)  # langchain Documents
    error: str = ""


def _split(pages: list[tuple[int, str]], chunking: ChunkSettings) -> list:
    from langchain_core.documents import Document
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(
        chunk_size=chunking.chunk_size,
        chunk_overlap=chunking.chunk_overlap,
        add_start_index=True,
    )
    documents = [
        Document(page_content=text, metadata={"page": page})
        for page, text in pages
        if text and text.strip()
    ]
    return [c for c in splitter.split_documents(documents) if c.page_content.strip()]


def doc_id_for(name: str, content_hash: str) -> str:
    return hashlib.sha256(f"{name}\0{content_hash}".encode()).hexdigest()[:32]


def _prepare(
    kb: KnowledgeBase, upload: UploadedFile, chunking: ChunkSettings, reread: bool = False
) -> _Prepared:
    name = display_name(upload.name)
    prepared = _Prepared(upload, name, chunking)
    settings = kb.settings
    try:
        prepared.file_type = file_type_of(name)
        size_mb = len(upload.data) / 1_000_000
        if size_mb > settings.max_upload_mb:
            raise DocumentError(
                f"The file is {size_mb:.1f} MB; the limit is {settings.max_upload_mb} MB "
                "(LRS_MAX_UPLOAD_MB)."
            )
        if not upload.data.strip():
            raise DocumentError("The file is empty.")
        prepared.content_hash = hashlib.sha256(upload.data).hexdigest()
        if not reread and kb.catalog.with_content(prepared.content_hash):
            return prepared  # already in: no need to read it again (`_add_one` says so)
        with tempfile.TemporaryDirectory() as scratch:
            # Parse a private copy under a name we made: the uploaded name is never a path.
            path = Path(scratch) / f"upload.{prepared.file_type}"
            path.write_bytes(upload.data)
            pages = extract(path, prepared.file_type, upload.data, settings)
        prepared.pages = sum(1 for page, _ in pages if page) or 1
        prepared.chunks = _split(pages, chunking)
        if len(prepared.chunks) > settings.max_document_passages:
            raise DocumentError(
                f"This file would make {len(prepared.chunks):,} passages; the studio takes at "
                f"most {settings.max_document_passages:,} from one file "
                "(LRS_MAX_DOCUMENT_PASSAGES). Split it, or use longer passages."
            )
        if not prepared.chunks:
            raise DocumentError(
                "No extractable text: the file may be a scan or an image. Run it through OCR "
                "first, or add a version with a text layer."
                if prepared.file_type == "pdf"
                else "No text in the file."
            )
    except DocumentError as error:
        prepared.error = str(error)
    return prepared


def _store_original(kb: KnowledgeBase, prepared: _Prepared) -> None:
    kb.files_dir.mkdir(parents=True, exist_ok=True)
    target = kb.stored_file(prepared.content_hash, prepared.file_type)
    if not target.exists():
        partial = target.with_suffix(".partial")
        try:
            partial.write_bytes(prepared.upload.data)
        except OSError:
            partial.unlink(missing_ok=True)  # a full disk: give back what the half file took
            raise
        partial.replace(target)  # atomic: a crash never leaves half a file under the name


def _write(
    kb: KnowledgeBase, prepared: _Prepared, doc_id: str, keep_record: bool = False
) -> Iterator[int]:
    """Store a prepared document's passages as pending, then mark it complete. Yields counts.
    On a failure or when abandoned, its passages go; its record goes too, unless `keep_record`
    (a document being redone from its stored original stays listed, pending, for `recover`)."""
    chunks = prepared.chunks
    for index, chunk in enumerate(chunks):
        chunk.metadata.update(
            doc_id=doc_id,
            source=prepared.name,
            file_type=prepared.file_type,
            passage=index,
            start=chunk.metadata.pop("start_index", 0),
            content_hash=prepared.content_hash,
        )
    kb.catalog.add_pending(
        DocumentRecord(
            doc_id,
            prepared.name,
            prepared.file_type,
            prepared.pages,
            len(chunks),
            len(prepared.upload.data),
            time.time(),
            prepared.content_hash,
            "pending",
            this_process(),
        )
    )
    with _active_lock:
        _active.add(doc_id)
    try:
        for start in range(0, len(chunks), _BATCH):
            batch = chunks[start : start + _BATCH]
            ids = [f"{doc_id}-{c.metadata['passage']:06d}" for c in batch]
            kb.store.add_documents(batch, ids=ids)
            yield start + len(batch)
        kb.catalog.complete(doc_id)
    except BaseException:
        # Nothing half-written stays behind: the document is either fully in or not at all.
        kb.delete_passages(doc_id)
        if not keep_record:
            kb.catalog.remove(doc_id)
        raise
    finally:
        with _active_lock:
            _active.discard(doc_id)


def ingest(
    kb: KnowledgeBase, files: Sequence[UploadedFile], chunking: ChunkSettings
) -> Generator[IngestEvent, None, None]:
    """Add files to `kb`, yielding an event as each one starts, progresses and ends."""
    check_writable(kb.settings, "Adding documents")
    total = max(len(files), 1)
    # Read and split the next file while this one is embedded (reading PDFs runs in a child
    # process, so it uses the other core).
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-read")
    try:
        futures: list[Future[_Prepared]] = [
            reader.submit(_prepare, kb, upload, chunking) for upload in files[:2]
        ]
        for position, upload in enumerate(files):
            if position + 2 < len(files):
                futures.append(reader.submit(_prepare, kb, files[position + 2], chunking))
            done = position / total
            name = display_name(upload.name)
            yield IngestEvent(name, "started", f"Reading {name}", done)
            prepared = futures[position].result()
            yield from _add_one(kb, prepared, done, 1 / total)
    finally:  # stopped early (cancelled): files not yet being read are never read
        reader.shutdown(wait=True, cancel_futures=True)
        release_freed_memory()  # the pages, passages and vectors of a large upload
    yield IngestEvent("", "progress", "Done", 1.0)


def _add_one(
    kb: KnowledgeBase, prepared: _Prepared, done: float, share: float, keep_record: bool = False
) -> Iterator[IngestEvent]:
    name = prepared.name
    if prepared.error:
        yield IngestEvent(name, "failed", prepared.error, done + share)
        return
    complete = [d for d in kb.documents() if d.status == "complete"]
    same = [d for d in complete if d.content_hash == prepared.content_hash]
    if not same and not prepared.chunks:  # a duplicate when read, whose twin has gone since
        prepared = _prepare(kb, prepared.upload, prepared.chunking, reread=True)
        if prepared.error:
            yield IngestEvent(name, "failed", prepared.error, done + share)
            return
    if same:
        where = "" if same[0].name == name else f" as '{same[0].name}'"
        yield IngestEvent(
            name,
            "skipped",
            f"Already in the knowledge base{where}: nothing changed.",
            done + share,
            same[0].passages,
            same[0].pages,
        )
        return
    older = [d for d in complete if d.name == name]
    doc_id = doc_id_for(name, prepared.content_hash)
    count = len(prepared.chunks)
    try:
        _store_original(kb, prepared)
        for written in _write(kb, prepared, doc_id, keep_record):
            yield IngestEvent(
                name,
                "progress",
                f"Embedding {name}: {written} of {count} passages",
                done + share * written / count,
            )
    except GeneratorExit:  # abandoned (cancelled): an original nobody lists goes too
        _forget_original(kb, prepared)
        raise
    except Exception as error:  # storage failed (disk full, server gone): report, carry on
        _forget_original(kb, prepared)
        reason = (
            "The disk is full: free some space, then add this file again. Nothing else changed."
            if is_disk_full(error)
            else f"Could not store the passages ({error})."
        )
        yield IngestEvent(name, "failed", reason, done + share)
        return
    for old in older:  # the new version is fully in: now the old one can go
        kb.delete_document(old.doc_id)
    pages = f" from {plural(prepared.pages, 'page')}" if prepared.file_type == "pdf" else ""
    if older:
        message = f"Replaced the earlier version: {plural(count, 'passage')}{pages}."
        status: Status = "replaced"
    else:
        message = f"Added {plural(count, 'passage')}{pages}."
        status = "added"
    yield IngestEvent(name, status, message, done + share, count, prepared.pages)


def _forget_original(kb: KnowledgeBase, prepared: _Prepared) -> None:
    if not kb.catalog.with_content(prepared.content_hash):  # its original is nobody's now
        kb.stored_file(prepared.content_hash, prepared.file_type).unlink(missing_ok=True)


def _redo(
    kb: KnowledgeBase,
    record: DocumentRecord,
    chunking: ChunkSettings,
    message: str,
    done: float,
    share: float,
) -> Iterator[IngestEvent]:
    """Add a catalogued document again from its stored original, its passages written anew. Its
    record is never dropped while its original exists: until the new passages are all in, it
    stays listed as pending, so an interruption at any point leaves it for `recover` to redo."""
    original = kb.original_path(record)
    kb.delete_passages(record.doc_id)
    if not original.exists():  # nothing can ever redo it: the failure names it, the record goes
        kb.catalog.remove(record.doc_id)
        yield IngestEvent(record.name, "failed", "Its stored file is gone: add it again.", done)
        return
    kb.catalog.add_pending(dataclasses.replace(record, status="pending", owner=this_process()))
    upload = UploadedFile(record.name, original.read_bytes())
    prepared = _prepare(kb, upload, chunking)
    if doc_id_for(prepared.name, prepared.content_hash) != record.doc_id:
        kb.catalog.remove(record.doc_id)  # an id of an older scheme: the new record replaces it
    for event in _add_one(kb, prepared, done, share, keep_record=True):
        if event.status in ("added", "replaced"):
            event = IngestEvent(
                record.name, "redone", message, event.fraction, event.passages, event.pages
            )
        yield event


def recover(kb: KnowledgeBase, chunking: ChunkSettings) -> list[IngestEvent]:
    """Redo documents left 'pending' by a writer that died (a crash or a restart mid-way). A
    read-only studio leaves them as they are: it writes nothing."""
    events: list[IngestEvent] = []
    if kb.settings.read_only:
        return events
    for record in kb.catalog.documents(status="pending"):
        with _active_lock:
            if record.doc_id in _active:
                continue
        if record.owner != this_process() and process_alive(record.owner):
            continue
        *_, last = _redo(
            kb, record, chunking, "Was interrupted earlier and has been added again.", 0.0, 1.0
        )
        events.append(last)
    return events


def rebuild(kb: KnowledgeBase, chunking: ChunkSettings) -> Iterator[IngestEvent]:
    """Write every document's passages again from its stored original: for a search index that
    was damaged or lost (KnowledgeBase.missing_passages)."""
    check_writable(kb.settings, "Rebuilding a knowledge base")
    records = kb.catalog.documents(status="complete")
    total = max(len(records), 1)
    for position, record in enumerate(records):
        yield IngestEvent(record.name, "started", f"Reading {record.name}", position / total)
        yield from _redo(
            kb, record, chunking, "Rebuilt from its stored file.", position / total, 1 / total
        )
    yield IngestEvent("", "progress", "Done", 1.0)

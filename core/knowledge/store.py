"""Knowledge bases: named Chroma collections, each with a catalog of its documents.

Vectors live in Chroma: embedded on disk under the data folder, or on a Chroma server when
settings name one. Each knowledge base also has a folder of its own under the data folder with a
SQLite catalog (which documents are in, and whether each is complete) and the original files.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import KnowledgeBaseError
from core.knowledge.chroma import check_owner, client_for, drop_collection, studio_id
from core.settings import Settings, check_writable

_NAME = re.compile(r"^[\w][\w .\-]{0,62}[\w.]$|^\w$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    file_type TEXT NOT NULL,
    pages INTEGER NOT NULL,
    passages INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    added REAL NOT NULL,
    content_hash TEXT NOT NULL,
    status TEXT NOT NULL,          -- 'pending' while passages are written, then 'complete'
    owner TEXT NOT NULL            -- 'host:pid' of the process writing a pending document
);
"""


@dataclass(frozen=True)
class DocumentRecord:
    """One document in a knowledge base, as the documents table shows it."""

    doc_id: str
    name: str
    file_type: str
    pages: int
    passages: int
    size_bytes: int
    added: float
    content_hash: str
    status: str
    owner: str


def slug(name: str) -> str:
    """A folder and collection name for a knowledge base name: readable, unique, Chroma-valid."""
    readable = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "kb"
    digest = hashlib.sha256(name.casefold().encode()).hexdigest()[:8]
    return f"kb-{readable}-{digest}"


class Catalog:
    """The SQLite catalog of one knowledge base; safe to use from several threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
            db.executescript(_SCHEMA)
        finally:
            db.close()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def get_meta(self) -> dict[str, str]:
        with self._connect() as db:
            return dict(db.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, **values: str) -> None:
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items())
            )

    def bump_revision(self) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('revision', '1') ON CONFLICT(key) "
                "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
            )

    def documents(self, status: str | None = None) -> list[DocumentRecord]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM documents ORDER BY added").fetchall()
        records = [DocumentRecord(*row) for row in rows]
        return [r for r in records if status is None or r.status == status]

    def with_content(self, content_hash: str) -> list[DocumentRecord]:
        """Documents (complete or pending) whose file has exactly this content."""
        return [d for d in self.documents() if d.content_hash == content_hash]

    def add_pending(self, record: DocumentRecord) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.doc_id,
                    record.name,
                    record.file_type,
                    record.pages,
                    record.passages,
                    record.size_bytes,
                    record.added,
                    record.content_hash,
                    "pending",
                    record.owner,
                ),
            )

    def complete(self, doc_id: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE documents SET status = 'complete' WHERE doc_id = ?", (doc_id,))
        self.bump_revision()

    def remove(self, doc_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))
        self.bump_revision()


class KnowledgeBase:
    """One named knowledge base: its Chroma collection, catalog and original files."""

    def __init__(self, settings: Settings, name: str, folder: Path, embeddings: Any) -> None:
        from langchain_chroma import Chroma

        self.settings = settings
        self.name = name
        self.folder = folder
        self.catalog = Catalog(folder / "catalog.sqlite")
        self.collection_name = folder.name
        client = client_for(settings)
        self.store = Chroma(
            collection_name=self.collection_name,
            embedding_function=embeddings,
            client=client,
            collection_metadata={
                "hnsw:space": "cosine",
                "studio_name": name,
                "studio_id": studio_id(settings),
            },
        )
        # The same collection through Chroma's own API, for what LangChain's wrapper does not
        # offer (counting, paging, adding ready-made vectors); vectors always come from us.
        self.collection = client.get_collection(self.collection_name, embedding_function=None)
        check_owner(self.collection, settings)

    @property
    def files_dir(self) -> Path:
        return self.folder / "files"

    @property
    def embedding_model(self) -> str:
        return self.catalog.get_meta().get("embedding_model", "")

    @property
    def revision(self) -> int:
        return int(self.catalog.get_meta().get("revision", "0"))

    def documents(self) -> list[DocumentRecord]:
        return self.catalog.documents()

    def passage_count(self) -> int:
        return int(self.collection.count())

    def missing_passages(self) -> int:
        """Passages the catalog has as stored but the search index has not (a damaged or lost
        Chroma folder, a collection deleted by hand): 0 when the two agree."""
        expected = sum(d.passages for d in self.catalog.documents(status="complete"))
        return max(expected - self.passage_count(), 0)

    def stored_batches(self, size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every stored passage with its vector and metadata, `size` at a time (Chroma's `get`
        result: ids, documents, metadatas, embeddings)."""
        offset = 0
        while True:
            got = self.collection.get(
                include=["embeddings", "documents", "metadatas"], limit=size, offset=offset
            )
            if not got["ids"]:
                return
            yield got
            offset += len(got["ids"])

    def original_path(self, record: DocumentRecord) -> Path:
        return self.stored_file(record.content_hash, record.file_type)

    def stored_file(self, content_hash: str, file_type: str) -> Path:
        """Where an original is stored: named by its content hash, never by the uploaded name."""
        return self.files_dir / f"{content_hash}.{file_type}"

    def add_vectors(
        self,
        ids: list[str],
        texts: list[str],
        metadatas: list[dict[str, Any]],
        vectors: Any,
    ) -> None:
        """Store passages whose vectors are already made (an imported knowledge base)."""
        check_writable(self.settings, "Adding passages")
        self.collection.add(ids=ids, documents=texts, metadatas=metadatas, embeddings=vectors)

    def delete_passages(self, doc_id: str) -> None:
        self.collection.delete(where={"doc_id": doc_id})

    def delete_document(self, doc_id: str) -> DocumentRecord:
        """Remove a document, its passages and (when no other record shares it) its file."""
        check_writable(self.settings, "Deleting documents")
        matches = [d for d in self.documents() if d.doc_id == doc_id]
        if not matches:
            raise KnowledgeBaseError("That document is no longer in the knowledge base.")
        record = matches[0]
        self.delete_passages(doc_id)
        self.catalog.remove(doc_id)
        if not self.catalog.with_content(record.content_hash):
            self.original_path(record).unlink(missing_ok=True)
        return record


def knowledge_base_names(settings: Settings) -> list[str]:
    """Names of all knowledge bases, read from their catalogs; no model or Chroma needed."""
    found = []
    for catalog in settings.knowledge_dir.glob("kb-*/catalog.sqlite"):
        name = Catalog(catalog).get_meta().get("name")
        if name:
            found.append(name)
    return sorted(found, key=str.casefold)


def validate_name(name: str) -> str:
    name = name.strip()
    if not _NAME.match(name):
        raise KnowledgeBaseError(
            "A knowledge base name has 1 to 64 characters: letters, digits, spaces, '.', '-' "
            "and '_', starting with a letter or digit."
        )
    return name


class KnowledgeStore:
    """All knowledge bases of this studio."""

    def __init__(self, settings: Settings, embeddings: Any) -> None:
        self.settings = settings
        self.embeddings = embeddings
        self.root = settings.knowledge_dir
        self.root.mkdir(parents=True, exist_ok=True)

    def names(self) -> list[str]:
        return knowledge_base_names(self.settings)

    def _folder(self, name: str) -> Path:
        return self.root / slug(name)

    def create(self, name: str) -> KnowledgeBase:
        check_writable(self.settings, "Creating a knowledge base")
        name = validate_name(name)
        folder = self._folder(name)
        if (folder / "catalog.sqlite").exists():
            raise KnowledgeBaseError(f"A knowledge base called '{name}' already exists.")
        folder.mkdir(parents=True, exist_ok=True)
        try:
            catalog = Catalog(folder / "catalog.sqlite")
            catalog.set_meta(
                name=name,
                embedding_model=self.settings.embedding_model,
                created=str(time.time()),
                revision="0",
            )
            return KnowledgeBase(self.settings, name, folder, self.embeddings)
        except BaseException:  # the server is down, or the name is another studio's there
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def open(self, name: str) -> KnowledgeBase:
        folder = self._folder(name)
        if not (folder / "catalog.sqlite").exists():
            raise KnowledgeBaseError(f"There is no knowledge base called '{name}'.")
        kb = KnowledgeBase(self.settings, name, folder, self.embeddings)
        if kb.embedding_model != self.settings.embedding_model:
            raise KnowledgeBaseError(
                f"The knowledge base '{name}' was built with the search model "
                f"'{kb.embedding_model}', but the studio now uses "
                f"'{self.settings.embedding_model}'. "
                "Mixing the two would give meaningless results: set LRS_EMBEDDING_MODEL back, or "
                "create a new knowledge base and add the documents again."
            )
        return kb

    def delete(self, name: str) -> None:
        check_writable(self.settings, "Deleting a knowledge base")
        folder = self._folder(name)
        if not (folder / "catalog.sqlite").exists():
            raise KnowledgeBaseError(f"There is no knowledge base called '{name}'.")
        drop_collection(self.settings, folder.name)
        shutil.rmtree(folder)

    def rename(self, old: str, new: str) -> None:
        """Give a knowledge base another name: its folder, collection and catalog move along."""
        check_writable(self.settings, "Renaming a knowledge base")
        new = validate_name(new)
        source, target = self._folder(old), self._folder(new)
        if not (source / "catalog.sqlite").exists():
            raise KnowledgeBaseError(f"There is no knowledge base called '{old}'.")
        if target.exists():
            raise KnowledgeBaseError(f"A knowledge base called '{new}' already exists.")
        from chromadb.errors import NotFoundError

        with contextlib.suppress(NotFoundError):  # no passages were ever added: nothing to move
            collection = client_for(self.settings).get_collection(source.name)
            check_owner(collection, self.settings)
            collection.modify(name=target.name)
        source.rename(target)
        Catalog(target / "catalog.sqlite").set_meta(name=new)

"""Knowledge bases: named Chroma collections, each with a catalog of its documents.

Vectors live in Chroma: embedded on disk under the data folder, or on a Chroma server when
settings name one. Each knowledge base also has a folder of its own under the data folder with a
SQLite catalog (which documents are in, and whether each is complete) and the original files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.errors import KnowledgeBaseError
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


def this_process() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


def process_alive(owner: str) -> bool:
    """Whether the process that wrote `owner` (host:pid) may still be running."""
    host, _, pid = owner.rpartition(":")
    if host != os.uname().nodename:
        return True  # another machine's writer: we cannot tell, so we leave it alone
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) answers the signal but is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def slug(name: str) -> str:
    """A folder and collection name for a knowledge base name: readable, unique, Chroma-valid."""
    readable = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "kb"
    digest = hashlib.sha256(name.casefold().encode()).hexdigest()[:8]
    return f"kb-{readable}-{digest}"


def chroma_client(path: str, read_only: bool = False) -> Any:
    """One embedded Chroma client per process and folder. A read-only studio never sets a
    damaged store aside: it reports it."""
    # One at a time: Chroma registers a new embedded store before starting it, so a second
    # client made meanwhile (two browser sessions opening at once) got a store without its
    # database ("'RustBindingsAPI' object has no attribute 'bindings'").
    with _client_lock:
        return _chroma_client(path, read_only)


_client_lock = threading.Lock()


def _options(**values: Any) -> Any:
    from chromadb.config import Settings as ChromaSettings

    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    return ChromaSettings(anonymized_telemetry=False, **values)


@lru_cache(maxsize=4)
def _chroma_client(path: str, read_only: bool) -> Any:
    import chromadb

    options = _options()
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        client = chromadb.PersistentClient(path=path, settings=options)
        client.list_collections()  # reads Chroma's database: a damaged one fails here
        return client
    except Exception as error:  # Chroma's InternalError, or a plain Exception from its bindings
        if read_only or not _DAMAGED.search(str(error)):
            raise KnowledgeBaseError(
                f"The knowledge bases' search index in '{folder}' could not be opened "
                f"({error}). Is another program using it?"
            ) from error
    # Damaged beyond Chroma's own repair: keep it for inspection, start an empty one. Every
    # knowledge base is then rebuilt from its stored original files (ingest.rebuild).
    from chromadb.api.client import SharedSystemClient

    # Forget this folder's store (only this one: other clients look theirs up in the same table).
    damaged = SharedSystemClient._identifier_to_system.pop(path, None)
    if damaged is not None:
        with contextlib.suppress(Exception):
            damaged.stop()
    aside = folder.with_name(f"{folder.name}-damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    folder.rename(aside)
    folder.mkdir()
    set_aside[path] = aside
    return chromadb.PersistentClient(path=path, settings=options)


# SQLite's words for a file that is not, or no longer, a sound database (codes 26 and 11), and
# what Chroma says when its tables are gone.
_DAMAGED = re.compile(r"not a database|malformed|code: (11|26)\b|no such table", re.IGNORECASE)
# Chroma folders found damaged in this process, and where each was set aside.
set_aside: dict[str, Path] = {}
_REFUSED = re.compile(r"unauthori[sz]ed|forbidden|\b40[13]\b", re.IGNORECASE)


@dataclass(frozen=True)
class ChromaServer:
    """Where and how to reach a Chroma server, and the namespace the studio uses on it."""

    host: str
    port: int
    ssl: bool
    ssl_ca: str | None
    tenant: str
    database: str
    headers: tuple[tuple[str, str], ...] = field(repr=False)  # secrets: never shown

    @property
    def address(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"

    @classmethod
    def from_settings(cls, settings: Settings) -> ChromaServer:
        headers = {
            name: value.get_secret_value() for name, value in settings.chroma_headers.items()
        }
        if settings.chroma_token is not None:
            token = settings.chroma_token.get_secret_value()
            header = settings.chroma_token_header
            headers[header] = token if header == "X-Chroma-Token" else f"Bearer {token}"
        return cls(
            host=settings.chroma_host or "",
            port=settings.chroma_port,
            ssl=settings.chroma_ssl,
            ssl_ca=str(settings.chroma_ssl_ca) if settings.chroma_ssl_ca else None,
            tenant=settings.chroma_tenant,
            database=settings.chroma_database or f"studio-{studio_id(settings)}",
            headers=tuple(sorted(headers.items())),
        )


def server_client(server: ChromaServer, read_only: bool = False) -> Any:
    """One client per process and server namespace; the tenant and database are created when
    missing (not by a read-only studio: it only reads)."""
    with _client_lock:
        return _server_client(server, read_only)


@lru_cache(maxsize=4)
def _server_client(server: ChromaServer, read_only: bool) -> Any:
    import chromadb
    from chromadb.errors import NotFoundError

    headers = dict(server.headers)
    try:
        if not read_only:
            admin = chromadb.AdminClient(
                _options(
                    chroma_api_impl="chromadb.api.fastapi.FastAPI",
                    chroma_server_host=server.host,
                    chroma_server_http_port=server.port,
                    chroma_server_ssl_enabled=server.ssl,
                    chroma_server_headers=headers,
                    chroma_server_ssl_verify=server.ssl_ca,
                )
            )
            _ensure(
                lambda: admin.get_tenant(server.tenant),
                lambda: admin.create_tenant(server.tenant),
            )
            _ensure(
                lambda: admin.get_database(server.database, server.tenant),
                lambda: admin.create_database(server.database, server.tenant),
            )
        return chromadb.HttpClient(
            host=server.host,
            port=server.port,
            ssl=server.ssl,
            headers=headers,
            settings=_options(chroma_server_ssl_verify=server.ssl_ca),
            tenant=server.tenant,
            database=server.database,
        )
    except NotFoundError:
        raise KnowledgeBaseError(
            f"The Chroma server at {server.address} has no database '{server.database}' in the "
            f"tenant '{server.tenant}', and a read-only studio does not create one: set "
            "LRS_CHROMA_TENANT and LRS_CHROMA_DATABASE to where the demo's knowledge is."
        ) from None
    except Exception as error:  # the client raises plain Exception or ValueError for HTTP errors
        if _REFUSED.search(str(error)):
            raise KnowledgeBaseError(
                f"The Chroma server at {server.address} refused the studio: its token is "
                "missing or wrong. Set LRS_CHROMA_TOKEN (and LRS_CHROMA_TOKEN_HEADER if the "
                "server expects X-Chroma-Token)."
            ) from None
        raise KnowledgeBaseError(
            f"The Chroma server at {server.address} does not answer "
            f"({_without_secrets(str(error), server)}). Start it, or remove LRS_CHROMA_HOST to "
            "keep knowledge bases on this machine."
        ) from None


def _ensure(exists: Any, create: Any) -> None:
    from chromadb.errors import NotFoundError

    try:
        exists()
    except NotFoundError:
        with contextlib.suppress(Exception):  # made meanwhile by another studio process
            create()


def _without_secrets(text: str, server: ChromaServer) -> str:
    for _, value in server.headers:
        text = text.replace(value, "***")
    return text[:300]


def chroma_path(settings: Settings) -> str:
    """Where the embedded Chroma store lives (unused with a Chroma server)."""
    return str(settings.data_dir / "chroma")


def client_for(settings: Settings) -> Any:
    if settings.chroma_host:
        return server_client(ChromaServer.from_settings(settings), settings.read_only)
    return chroma_client(chroma_path(settings), settings.read_only)


STUDIO_ID_FILE = "studio-id"


def studio_id(settings: Settings) -> str:
    """This studio's identity, kept in its data folder (several processes on one folder are one
    studio): it names the studio's Chroma database and marks every collection it makes."""
    return _studio_id(settings.data_dir, settings.read_only)


@lru_cache(maxsize=16)  # read at every opening of a knowledge base: once per folder is enough
def _studio_id(data_dir: Path, read_only: bool) -> str:
    path = data_dir / STUDIO_ID_FILE
    with contextlib.suppress(OSError):
        found = path.read_text().strip()
        if re.fullmatch(r"[0-9a-z]{12,64}", found):
            return found
    if read_only:  # writes nothing: an identity from where its data lies
        return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    data_dir.mkdir(parents=True, exist_ok=True)
    made = uuid.uuid4().hex[:16]
    partial = path.with_name(f".{STUDIO_ID_FILE}.{made}")
    partial.write_text(made)
    try:
        os.link(partial, path)  # the first process to get here names the studio for all
    except FileExistsError:
        pass
    finally:
        partial.unlink(missing_ok=True)
    return path.read_text().strip()


def check_owner(collection: Any, settings: Settings) -> None:
    """Refuse a collection another studio made (its metadata names that studio)."""
    owner = (collection.metadata or {}).get("studio_id")
    if owner is not None and owner != studio_id(settings):
        raise KnowledgeBaseError(
            f"The Chroma server already holds a collection '{collection.name}' that another "
            "studio made, so this studio leaves it alone. Give each studio a database of its "
            "own (leave LRS_CHROMA_DATABASE empty, or set a different one)."
        )


def drop_collection(settings: Settings, name: str) -> None:
    """Delete this studio's collection `name`; one that is missing, or another studio's, stays."""
    from chromadb.errors import NotFoundError

    client = client_for(settings)
    try:
        collection = client.get_collection(name)
    except NotFoundError:
        return  # no passages were ever added: nothing to drop
    check_owner(collection, settings)
    client.delete_collection(name)


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
        self.store = Chroma(
            collection_name=self.collection_name,
            embedding_function=embeddings,
            client=client_for(settings),
            collection_metadata={
                "hnsw:space": "cosine",
                "studio_name": name,
                "studio_id": studio_id(settings),
            },
        )
        check_owner(self.store._collection, settings)

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
        return int(self.store._collection.count())

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
            got = self.store._collection.get(
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
        self.store._collection.add(
            ids=ids, documents=texts, metadatas=metadatas, embeddings=vectors
        )

    def delete_passages(self, doc_id: str) -> None:
        self.store._collection.delete(where={"doc_id": doc_id})

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

        from core.retrieve import forget

        with contextlib.suppress(NotFoundError):  # no passages were ever added: nothing to move
            collection = client_for(self.settings).get_collection(source.name)
            check_owner(collection, self.settings)
            collection.modify(name=target.name)
        source.rename(target)
        Catalog(target / "catalog.sqlite").set_meta(name=new)
        forget(source.name)

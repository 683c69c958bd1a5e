"""Chroma clients: the embedded store under the data folder (one client per process and folder,
a damaged store set aside and reported), or a Chroma server with this studio's own tenant and
database, its token, TLS and headers; and the studio's identity that each collection records."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.errors import KnowledgeBaseError
from core.settings import Settings


def chroma_client(path: str, read_only: bool = False) -> Any:
    """One embedded Chroma client per process and folder. A read-only studio never sets a
    damaged store aside: it reports it."""
    # One at a time: Chroma registers a new embedded store before starting it, so a second
    # client made meanwhile (two browser sessions opening at once) got a store without its
    # database ("'RustBindingsAPI' object has no attribute 'bindings'").
    with _client_lock:
        return _chroma_client(path, read_only)[0]


def damage_set_aside(settings: Settings) -> Path | None:
    """Where this process set a damaged embedded store aside when it opened it (None: it was
    sound, or the studio uses a Chroma server)."""
    if settings.chroma_host:
        return None
    with _client_lock:
        return _chroma_client(chroma_path(settings), settings.read_only)[1]


_client_lock = threading.Lock()


def _options(**values: Any) -> Any:
    from chromadb.config import Settings as ChromaSettings

    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    return ChromaSettings(anonymized_telemetry=False, **values)


@lru_cache(maxsize=4)
def _chroma_client(path: str, read_only: bool) -> tuple[Any, Path | None]:
    """The client of `path`, and where a damaged store found there was set aside."""
    import chromadb

    options = _options()
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        client = chromadb.PersistentClient(path=path, settings=options)
        client.list_collections()  # reads Chroma's database: a damaged one fails here
        return client, None
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
    return chromadb.PersistentClient(path=path, settings=options), aside


# SQLite's words for a file that is not, or no longer, a sound database (codes 26 and 11), and
# what Chroma says when its tables are gone.
_DAMAGED = re.compile(r"not a database|malformed|code: (11|26)\b|no such table", re.IGNORECASE)


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

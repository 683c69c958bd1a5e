"""Server mode against a real Chroma server: the same results as the embedded store."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.retrieve import search
from core.knowledge.store import KnowledgeStore
from tests.support.documents import pdf_bytes
from tests.support.ports import free_port

FILES = [
    UploadedFile("handbook.pdf", pdf_bytes(["Welcome.", "The code is BLUE-HARBOR-42.", "Bye."])),
    UploadedFile("faq.txt", b"Refunds are possible within 45 days."),
    UploadedFile("extra.md", b"# Parking\n\nParking is free on Sundays."),
]


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    chroma = Path(sys.executable).with_name("chroma")
    process = subprocess.Popen(
        [
            str(chroma),
            "run",
            "--path",
            str(tmp_path_factory.mktemp("chroma-server")),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    yield port
    process.terminate()
    process.wait(timeout=20)


def exercise(store: KnowledgeStore) -> dict:
    kb = store.create("Shared")
    events = [e.status for e in ingest(kb, FILES, ChunkSettings(200, 20)) if e.status != "progress"]
    found = [
        (p.citation, p.text)
        for p in search(kb, "What is the code BLUE-HARBOR-42?", top_k=3).passages
    ]
    faq = next(d for d in kb.documents() if d.name == "faq.txt")
    kb.delete_document(faq.doc_id)
    after = sorted(p.citation for p in search(kb, "refunds 45 days", top_k=5).passages)
    return {"events": events, "found": found, "after_delete": after, "count": kb.passage_count()}


def test_server_mode_matches_embedded_mode(
    settings, fake_embeddings, chroma_server, tmp_path
) -> None:
    embedded = exercise(KnowledgeStore(settings, fake_embeddings))
    server_settings = settings.model_copy(
        update={
            "data_dir": tmp_path / "server-data",
            "chroma_host": "127.0.0.1",
            "chroma_port": chroma_server,
        }
    )
    served = exercise(KnowledgeStore(server_settings, fake_embeddings))
    assert served == embedded
    assert "faq.txt" not in served["after_delete"]
    assert served["count"] == embedded["count"] > 0


def test_a_server_that_is_down_gives_a_plain_message(settings, fake_embeddings) -> None:
    from core.errors import KnowledgeBaseError

    down = settings.model_copy(update={"chroma_host": "127.0.0.1", "chroma_port": free_port()})
    with pytest.raises(KnowledgeBaseError, match="does not answer"):
        KnowledgeStore(down, fake_embeddings).create("Nowhere")


def test_a_demo_imported_into_a_server_studio_and_replaced_keeps_its_answers(
    settings, fake_embeddings, chroma_server, tmp_path
) -> None:
    from core.sharing import export, importing

    local = KnowledgeStore(settings, fake_embeddings)
    list(ingest(local.create("Harbour demo"), FILES, ChunkSettings(200, 20)))
    bundle = export.export_bundle(
        settings,
        local,
        export.ExportChoice(knowledge_bases=["Harbour demo"]),
        tmp_path / "demo.zip",
    )
    served_settings = settings.model_copy(
        update={
            "data_dir": tmp_path / "served",
            "chroma_host": "127.0.0.1",
            "chroma_port": chroma_server,
        }
    )
    served = KnowledgeStore(served_settings, fake_embeddings)
    importing.import_bundle(served_settings, served, bundle)
    importing.import_bundle(served_settings, served, bundle, replace=True)  # renamed on the server
    assert served.names() == ["Harbour demo"]

    def answers(store: KnowledgeStore) -> list:
        found = search(store.open("Harbour demo"), "What is the code BLUE-HARBOR-42?", top_k=3)
        return [(p.citation, p.text, p.score) for p in found.passages]

    assert answers(served) == answers(local)


# -- two studios on one server, tokens, TLS --------------------------------------------------------
def served(settings, folder: Path, port: int, **values):  # type: ignore[no-untyped-def]
    """Settings of a studio on the server at `port`, checked as the environment's would be."""
    from core.settings import Settings

    values = {
        **settings.model_dump(),
        "data_dir": folder,
        "chroma_host": "127.0.0.1",
        "chroma_port": port,
        **values,
    }
    for name in ("chroma_token", "demo_password"):
        if hasattr(values.get(name), "get_secret_value"):
            values[name] = values[name].get_secret_value()
    return Settings(_env_file=None, **values)


def databases(port: int, tenant: str = "default_tenant") -> list[str]:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    admin = chromadb.AdminClient(
        ChromaSettings(
            chroma_api_impl="chromadb.api.fastapi.FastAPI",
            chroma_server_host="127.0.0.1",
            chroma_server_http_port=port,
            anonymized_telemetry=False,
        )
    )
    return [d["name"] for d in admin.list_databases(tenant=tenant)]


def notes(store: KnowledgeStore, text: bytes):  # type: ignore[no-untyped-def]
    kb = store.create("Notes")
    list(ingest(kb, [UploadedFile("notes.txt", text)], ChunkSettings(200, 20)))
    return kb


def test_two_studios_on_one_server_each_keep_their_own_knowledge_bases(
    settings, fake_embeddings, chroma_server, tmp_path
) -> None:
    from core.knowledge.chroma import studio_id

    first = served(settings, tmp_path / "a", chroma_server)
    second = served(settings, tmp_path / "b", chroma_server)
    a = notes(KnowledgeStore(first, fake_embeddings), b"Studio A: the lamp is lit at dusk.")
    b_store = KnowledgeStore(second, fake_embeddings)
    notes(b_store, b"Studio B: the ferry leaves at nine.")
    assert studio_id(first) != studio_id(second)
    assert {f"studio-{studio_id(first)}", f"studio-{studio_id(second)}"} <= set(
        databases(chroma_server)
    )  # each studio's own database, created when missing

    b_store.delete("Notes")  # studio B deletes its "Notes"...
    assert a.passage_count() == 1  # ...and studio A's "Notes" keeps every passage
    [found] = search(a, "When is the lamp lit?", top_k=1).passages
    assert "lamp is lit at dusk" in found.text


def test_a_studio_refuses_a_collection_another_studio_made(
    settings, fake_embeddings, chroma_server, tmp_path
) -> None:
    from core.errors import KnowledgeBaseError

    shared = {"chroma_tenant": "harbour", "chroma_database": "shared-by-mistake"}
    first = served(settings, tmp_path / "a", chroma_server, **shared)
    second = served(settings, tmp_path / "b", chroma_server, **shared)
    a = notes(KnowledgeStore(first, fake_embeddings), b"Studio A: the lamp is lit at dusk.")
    assert "shared-by-mistake" in databases(chroma_server, "harbour")  # tenant made too
    b_store = KnowledgeStore(second, fake_embeddings)
    with pytest.raises(KnowledgeBaseError, match="another studio"):
        b_store.create("Notes")
    assert b_store.names() == []  # nothing half made
    # A folder copied from studio A does not make its collection B's to delete.
    shutil.copytree(a.folder, second.knowledge_dir / a.folder.name)
    with pytest.raises(KnowledgeBaseError, match="another studio"):
        b_store.delete("Notes")
    assert a.passage_count() == 1


@pytest.mark.parametrize("header", ["Authorization", "X-Chroma-Token"])
def test_a_server_behind_token_auth_takes_the_studio_with_its_token_only(
    settings, fake_embeddings, chroma_server, tmp_path, caplog, header
) -> None:
    from core.errors import KnowledgeBaseError
    from tests.support.chroma_proxy import token_proxy

    token = "harbour-token-Zq81x"
    with token_proxy(chroma_server, token) as (port, seen):
        without = served(settings, tmp_path / "without", port)
        with pytest.raises(KnowledgeBaseError, match="refused the studio") as refused:
            KnowledgeStore(without, fake_embeddings).create("Notes")
        wrong = served(settings, tmp_path / "wrong", port, chroma_token="not-it")
        with pytest.raises(KnowledgeBaseError, match="token is missing or wrong"):
            KnowledgeStore(wrong, fake_embeddings).create("Notes")

        right = served(
            settings,
            tmp_path / "right",
            port,
            chroma_token=token,
            chroma_token_header=header,
            chroma_headers={"X-Team": "harbour"},
        )
        kb = notes(KnowledgeStore(right, fake_embeddings), b"Behind the proxy: BLUE-42.")
        assert kb.passage_count() == 1
        assert "BLUE-42" in search(kb, "BLUE-42", top_k=1).passages[0].text
    sent = [h for h in seen if h.get("X-Team") == "harbour"]
    assert sent and all(
        h.get(header) == (token if header == "X-Chroma-Token" else f"Bearer {token}") for h in sent
    )
    shown = [str(refused.value), repr(right), str(right), caplog.text]
    assert not [text for text in shown if token in text]  # the token is never shown or logged
    assert token not in (tmp_path / "right").joinpath("studio-id").read_text()


def test_a_server_over_tls_is_reached_with_its_certificate(
    settings, fake_embeddings, chroma_server, tmp_path
) -> None:
    from core.errors import KnowledgeBaseError
    from tests.support.chroma_proxy import self_signed, token_proxy

    certificate = self_signed(tmp_path)
    with token_proxy(chroma_server, "tls-token", tls=certificate) as (port, _):
        unknown = served(settings, tmp_path / "u", port, chroma_ssl=True, chroma_token="tls-token")
        with pytest.raises(KnowledgeBaseError, match=r"https://127\.0\.0\.1"):  # not trusted
            KnowledgeStore(unknown, fake_embeddings).create("Notes")
        trusted = served(
            settings,
            tmp_path / "t",
            port,
            chroma_ssl=True,
            chroma_ssl_ca=certificate[0],
            chroma_token="tls-token",
        )
        kb = notes(KnowledgeStore(trusted, fake_embeddings), b"Over TLS: the harbour is open.")
        assert kb.passage_count() == 1

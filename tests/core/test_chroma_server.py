"""Server mode against a real Chroma server: the same results as the embedded store."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge import KnowledgeStore
from core.retrieve import search
from tests.documents import pdf_bytes
from tests.ports import free_port

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
    from core import share

    local = KnowledgeStore(settings, fake_embeddings)
    list(ingest(local.create("Harbour demo"), FILES, ChunkSettings(200, 20)))
    bundle = share.export_bundle(
        settings, local, share.ExportChoice(knowledge_bases=["Harbour demo"]), tmp_path / "demo.zip"
    )
    served_settings = settings.model_copy(
        update={
            "data_dir": tmp_path / "served",
            "chroma_host": "127.0.0.1",
            "chroma_port": chroma_server,
        }
    )
    served = KnowledgeStore(served_settings, fake_embeddings)
    share.import_bundle(served_settings, served, bundle)
    share.import_bundle(served_settings, served, bundle, replace=True)  # renamed on the server
    assert served.names() == ["Harbour demo"]

    def answers(store: KnowledgeStore) -> list:
        found = search(store.open("Harbour demo"), "What is the code BLUE-HARBOR-42?", top_k=3)
        return [(p.citation, p.text, p.score) for p in found.passages]

    assert answers(served) == answers(local)

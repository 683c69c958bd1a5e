import subprocess
import threading

import pytest

from core.knowledge import ingest as ingest_module
from core.knowledge import reading
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest, recover
from core.knowledge.reading import display_name
from core.knowledge.store import DocumentRecord
from tests.support.documents import (
    docx_bytes,
    encrypted_pdf_bytes,
    html_bytes,
    pdf_bytes,
    png_bytes,
    scanned_pdf_bytes,
)

SMALL = ChunkSettings(chunk_size=200, chunk_overlap=20)
PAGES = ["Intro page about the harbor.", "The release code is BLUE-HARBOR-42.", "Refunds: 45 days."]


def run(kb, *files, chunking=SMALL):
    return [e for e in ingest(kb, list(files), chunking) if e.status not in ("started", "progress")]


def one(kb, name: str, data: bytes):
    [event] = run(kb, UploadedFile(name, data))
    return event


def test_a_pdf_is_added_page_by_page_with_full_metadata(knowledge) -> None:
    kb = knowledge.create("Docs")
    event = one(kb, "report.pdf", pdf_bytes(PAGES))
    assert (event.status, event.pages, event.passages) == ("added", 3, 3)
    assert event.message == "Added 3 passages from 3 pages."
    stored = kb.store.get(include=["documents", "metadatas"])
    by_page = {
        m["page"]: (m, text)
        for m, text in zip(stored["metadatas"], stored["documents"], strict=True)
    }
    meta, text = by_page[2]
    assert "BLUE-HARBOR-42" in text
    [record] = kb.documents()
    assert meta["doc_id"] == record.doc_id and meta["source"] == "report.pdf"
    assert meta["content_hash"] == record.content_hash and meta["file_type"] == "pdf"
    assert {"passage", "start"} <= set(meta)
    assert (record.pages, record.passages, record.status) == (3, 3, "complete")


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        (
            "notes.docx",
            docx_bytes(["The office opens at nine.", "Lunch is at noon."]),
            "opens at nine",
        ),
        ("page.html", html_bytes("Help desk", "Call desk seven."), "Call desk seven."),
        ("readme.md", b"# Title\n\nMarkdown *body* text.", "Markdown *body* text."),
        (
            "latin.txt",
            "Caf\xe9 cr\xe8me \xe0 la fran\xe7aise, tr\xe8s bien.".encode("latin-1"),
            "Café crème",
        ),
        ("bom16.txt", "Ünïcödé text with a BOM.".encode("utf-16"), "Ünïcödé text"),
        ("bom8.txt", "\ufeffUTF-8 with a BOM.".encode(), "UTF-8 with a BOM."),
    ],
)
def test_every_supported_format_and_encoding_is_read(knowledge, name, data, expected) -> None:
    kb = knowledge.create("Formats")
    event = one(kb, name, data)
    assert event.status == "added", event.message
    text = " ".join(kb.store.get(include=["documents"])["documents"])
    assert expected in text
    assert "alert(" not in text and "color: red" not in text  # no script or style from HTML


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.txt", b"", "The file is empty."),
        ("blank.md", b"   \n\t ", "The file is empty."),
        ("picture.pdf", png_bytes(), "not a PDF"),
        ("binary.txt", bytes(range(256)) * 20, "does not look like text"),
        ("broken.pdf", b"%PDF-1.7\n" + b"\x00garbage" * 50, "not a readable PDF"),
        ("scan.pdf", scanned_pdf_bytes(), "No extractable text"),
        ("locked.pdf", encrypted_pdf_bytes("secret"), "password-protected"),
        ("fake.docx", b"plain text, not a zip", "not a Word document"),
        ("program.exe", b"MZ\x90\x00", "'.exe' is not one of them"),
        ("noextension", b"hello", "has no extension"),
    ],
)
def test_bad_files_fail_with_a_reason_and_nothing_is_stored(knowledge, name, data, message) -> None:
    kb = knowledge.create("Bad")
    event = one(kb, name, data)
    assert event.status == "failed" and message in event.message
    assert kb.documents() == [] and kb.passage_count() == 0


def test_a_pdf_with_an_empty_password_opens(knowledge) -> None:
    kb = knowledge.create("Open")
    assert one(kb, "open.pdf", encrypted_pdf_bytes("Visible text", password="")).status == "added"


def test_a_file_above_the_size_limit_is_refused_with_the_limit(knowledge, settings) -> None:
    kb = knowledge.create("Big")
    kb.settings = settings.model_copy(update={"max_upload_mb": 1})
    event = one(kb, "big.txt", b"word " * 300_000)
    assert event.status == "failed"
    assert "1.5 MB; the limit is 1 MB" in event.message


def test_one_bad_file_never_stops_the_batch(knowledge) -> None:
    kb = knowledge.create("Batch")
    events = run(
        kb,
        UploadedFile("good1.txt", b"First good file."),
        UploadedFile("bad.pdf", png_bytes()),
        UploadedFile("good2.txt", b"Second good file."),
    )
    assert [e.status for e in events] == ["added", "failed", "added"]
    assert [e.fraction for e in events] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert len(kb.documents()) == 2


@pytest.mark.parametrize(
    "raw",
    [
        "../../x.pdf",
        "/etc/passwd.txt",
        "C:\\Windows\\evil.txt",
        "nul\x00byte.txt",
        "a" * 500 + ".txt",
    ],
)
def test_uploaded_names_are_never_used_as_paths(knowledge, tmp_path, raw) -> None:
    kb = knowledge.create("Names")
    data = b"%PDF" if raw.endswith(".pdf") else b"Some text for the name test."
    if raw.endswith(".pdf"):
        data = pdf_bytes(["Name test."])
    event = one(kb, raw, data)
    assert event.status == "added", event.message
    shown = display_name(raw)
    assert "/" not in shown and "\\" not in shown and "\x00" not in shown and len(shown) <= 120
    stored = list(kb.files_dir.iterdir())
    assert [p.name for p in stored] == [
        f"{kb.documents()[0].content_hash}.{shown.rsplit('.', 1)[1]}"
    ]
    assert not (tmp_path / "x.pdf").exists()


def test_the_same_file_again_changes_nothing_and_says_so(knowledge) -> None:
    kb = knowledge.create("Again")
    one(kb, "a.txt", b"Exactly the same content.")
    revision = kb.revision
    event = one(kb, "a.txt", b"Exactly the same content.")
    assert event.status == "skipped" and "nothing changed" in event.message
    assert kb.revision == revision and kb.passage_count() == 1
    renamed = one(kb, "copy.txt", b"Exactly the same content.")
    assert renamed.status == "skipped" and "as 'a.txt'" in renamed.message


def test_a_changed_file_with_the_same_name_replaces_its_passages(knowledge) -> None:
    kb = knowledge.create("Change")
    one(kb, "policy.txt", b"Refunds within 30 days.")
    event = one(kb, "policy.txt", b"Refunds within 45 days.")
    assert event.status == "replaced" and "Replaced the earlier version" in event.message
    texts = kb.store.get(include=["documents"])["documents"]
    assert texts == ["Refunds within 45 days."]
    assert [d.content_hash for d in kb.documents()] == [kb.documents()[0].content_hash]
    assert len(list(kb.files_dir.iterdir())) == 1  # the old original went with it


def test_a_failed_replacement_keeps_the_old_version(knowledge) -> None:
    kb = knowledge.create("Keep")
    one(kb, "manual.pdf", pdf_bytes(["Version one."]))
    assert one(kb, "manual.pdf", png_bytes()).status == "failed"
    assert "Version one." in kb.store.get(include=["documents"])["documents"][0]


def test_a_storage_failure_mid_document_leaves_no_half_document(knowledge, monkeypatch) -> None:
    kb = knowledge.create("Half")
    calls = {"n": 0}
    real_add = kb.store.add_documents

    def flaky(documents, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("No space left on device")
        return real_add(documents, **kwargs)

    monkeypatch.setattr(kb.store, "add_documents", flaky)
    monkeypatch.setattr(ingest_module, "_BATCH", 2)
    event = one(kb, "long.txt", ("A sentence of the long file. " * 40).encode())
    assert event.status == "failed" and event.message.startswith("The disk is full")
    assert kb.documents() == [] and kb.passage_count() == 0


def test_a_crash_mid_document_is_found_and_cleanly_redone(knowledge) -> None:
    kb = knowledge.create("Crash")
    one(kb, "doc.txt", b"The whole document text.")
    [record] = kb.documents()
    # What a writer killed mid-way leaves: a pending record owned by a process that is gone, and
    # only some of its passages (here: none).
    kb.catalog.add_pending(DocumentRecord(**{**record.__dict__, "owner": f"{_host()}:999999"}))
    kb.store.delete(where={"doc_id": record.doc_id})
    assert kb.passage_count() == 0 and kb.documents()[0].status == "pending"
    events = recover(kb, SMALL)
    assert [(e.status, e.file_name) for e in events] == [("redone", "doc.txt")]
    [again] = kb.documents()
    assert again.status == "complete" and kb.passage_count() == 1
    assert recover(kb, SMALL) == []


def _host() -> str:
    import os

    return os.uname().nodename


def test_a_pending_document_of_a_live_writer_is_left_alone(knowledge) -> None:
    kb = knowledge.create("Live")
    one(kb, "doc.txt", b"Being written by someone else.")
    [record] = kb.documents()
    kb.catalog.add_pending(DocumentRecord(**{**record.__dict__, "owner": f"{_host()}:1"}))  # init
    assert recover(kb, SMALL) == []
    assert kb.passage_count() == 1


def test_two_sessions_adding_at_once_both_succeed(knowledge) -> None:
    kb = knowledge.create("Shared")
    other = knowledge.open("Shared")
    results: dict[str, list] = {}

    def add(handle, label):
        files = [
            UploadedFile(f"{label}-{i}.txt", f"{label} document {i}.".encode()) for i in range(4)
        ]
        results[label] = run(handle, *files)

    threads = [threading.Thread(target=add, args=(h, n)) for h, n in [(kb, "a"), (other, "b")]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(e.status == "added" for events in results.values() for e in events)
    assert len(kb.documents()) == 8 and kb.passage_count() == 8


def test_a_pdf_that_hangs_the_parser_is_stopped(knowledge, settings, monkeypatch) -> None:
    kb = knowledge.create("Hang")
    kb.settings = settings.model_copy(update={"parse_timeout_s": 5})
    real_run = subprocess.run

    def slow_child(args, **kwargs):  # the child "loops": it never answers in time
        return real_run([args[0], "-c", "import time; time.sleep(60)"], **kwargs)

    monkeypatch.setattr(reading.subprocess, "run", slow_child)
    event = one(kb, "loop.pdf", pdf_bytes(["x"]))
    assert event.status == "failed" and "longer than 5 s" in event.message


def test_a_pdf_that_blows_up_memory_is_stopped(knowledge, settings, monkeypatch) -> None:
    kb = knowledge.create("Memory")
    kb.settings = settings.model_copy(update={"parse_memory_mb": 256})
    real_run = subprocess.run

    def hungry_child(args, **kwargs):  # same memory cap as the real child, then a huge allocation
        code = (
            "import sys; from core.knowledge.reader_process import _limit_memory; "
            "_limit_memory(256); "
            "from core.knowledge.reader_process import read_pages; b = bytearray(2_000_000_000)"
        )
        return real_run([args[0], "-c", code], **kwargs)

    monkeypatch.setattr(reading.subprocess, "run", hungry_child)
    event = one(kb, "huge.pdf", pdf_bytes(["x"]))
    assert event.status == "failed" and "memory" in event.message
    assert kb.documents() == []


KILLED_WRITER = """
import sys, time
from langchain_core.embeddings import DeterministicFakeEmbedding
from core.knowledge import ingest as ingest_module
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.store import KnowledgeStore
from core.settings import Settings

class Slow(DeterministicFakeEmbedding):
    def embed_documents(self, texts):
        time.sleep(0.3)
        return super().embed_documents(texts)

ingest_module._BATCH = 4
settings = Settings(_env_file=None, data_dir=sys.argv[1])
kb = KnowledgeStore(settings, Slow(size=32)).open("Killed")
text = " ".join(f"Sentence number {i} of the long document." for i in range(400))
for event in ingest(kb, [UploadedFile("long.txt", text.encode())], ChunkSettings(200, 20)):
    if event.status == "progress" and "Embedding" in event.message:
        print("STORED", flush=True)
"""


def test_a_writer_killed_with_sigkill_mid_document_is_redone(knowledge, settings) -> None:
    import sys
    from pathlib import Path

    kb = knowledge.create("Killed")
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(settings.data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "STORED"  # some passages are in, not all
    writer.kill()
    writer.wait(timeout=10)
    [half] = kb.documents()
    assert half.status == "pending" and 0 < kb.passage_count() < half.passages
    from core.knowledge.retrieve import search

    assert search(kb, "Sentence number 3").passages == []  # a half document is never searched

    [event] = recover(kb, SMALL)
    assert event.status == "redone"
    [whole] = kb.documents()
    assert whole.status == "complete" and kb.passage_count() == whole.passages


def _docx_bomb(megabytes: int) -> bytes:
    """A Word file of a few hundred kB whose document.xml expands to `megabytes` MB."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        with archive.open("word/document.xml", "w") as xml:
            xml.write(b'<?xml version="1.0"?><w:document><w:body><w:p><w:r><w:t>')
            block = b"a" * 1_000_000
            for _ in range(megabytes):
                xml.write(block)
            xml.write(b"</w:t></w:r></w:p></w:body></w:document>")
    return buffer.getvalue()


def test_a_word_zip_bomb_is_read_apart_and_refused_plainly(knowledge) -> None:
    import resource

    bomb = _docx_bomb(600)
    assert len(bomb) < 2_000_000
    kb = knowledge.create("Bombs")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    event = one(kb, "report.docx", bomb)
    assert event.status == "failed"
    assert "memory" in event.message or "LRS_MAX_DOCUMENT_CHARS" in event.message
    # parsed in the child: the studio's own peak memory did not take the expanded text
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300_000  # kB
    assert kb.documents() == [] and kb.passage_count() == 0


@pytest.mark.parametrize("name", ["long.txt", "long.docx", "long.html"])
def test_a_document_with_more_text_than_the_cap_is_refused_with_the_setting_named(
    settings, fake_embeddings, name
) -> None:
    from core.knowledge.store import KnowledgeStore

    text = "A sentence of a very long file. " * 200
    data = {
        "long.txt": text.encode(),
        "long.docx": docx_bytes([text]),
        "long.html": html_bytes("Long", text),
    }[name]
    capped = settings.model_copy(update={"max_document_chars": 1_000})
    kb = KnowledgeStore(capped, fake_embeddings).create("Capped")
    event = one(kb, name, data)
    assert event.status == "failed" and "LRS_MAX_DOCUMENT_CHARS" in event.message
    few = settings.model_copy(update={"max_document_passages": 10})
    kb = KnowledgeStore(few, fake_embeddings).create("Few")
    event = one(kb, name, data)
    assert event.status == "failed" and "LRS_MAX_DOCUMENT_PASSAGES" in event.message

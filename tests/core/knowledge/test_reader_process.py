"""The child process that reads PDF, Word and HTML files: pages or a plain error, never a
traceback, and a cap on the text it returns."""

import json
import subprocess
import sys
from pathlib import Path

from core.knowledge import reader_process
from tests.support.documents import docx_bytes, encrypted_pdf_bytes, html_bytes, pdf_bytes

ROOT = Path(__file__).resolve().parents[3]


def test_a_pdf_is_read_page_by_page(tmp_path) -> None:
    path = tmp_path / "a.pdf"
    path.write_bytes(pdf_bytes(["One.", "Two."]))
    pages = reader_process.read_pages(str(path))["pages"]
    assert isinstance(pages, list) and len(pages) == 2 and "Two." in pages[1]


def test_a_password_protected_pdf_and_a_broken_one_get_plain_errors(tmp_path) -> None:
    locked = tmp_path / "locked.pdf"
    locked.write_bytes(encrypted_pdf_bytes("Secret."))
    assert "password-protected" in str(reader_process.read_pages(str(locked))["error"])
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7\n garbage")
    assert "not a readable PDF" in str(reader_process.read_pages(str(broken))["error"])


def test_word_and_html_files_are_read_and_hidden_html_is_dropped(tmp_path) -> None:
    word = tmp_path / "a.docx"
    word.write_bytes(docx_bytes(["Paragraph one."]))
    assert "Paragraph one." in str(reader_process.read_docx(str(word))["pages"])
    not_word = tmp_path / "b.docx"
    not_word.write_bytes(b"plain text")
    assert "not a Word document" in str(reader_process.read_docx(str(not_word))["error"])
    page = tmp_path / "a.html"
    page.write_bytes(html_bytes("Title", "Visible.<script>alert('hidden')</script>"))
    text = str(reader_process.read_html(str(page))["pages"])
    assert "Visible." in text and "hidden" not in text


def test_the_child_prints_one_json_object_and_caps_the_text(tmp_path) -> None:
    path = tmp_path / "a.pdf"
    path.write_bytes(pdf_bytes(["A page with some words on it."]))
    command = [sys.executable, "-m", "core.knowledge.reader_process", str(path), "1024", "pdf"]
    done = subprocess.run([*command, "10"], capture_output=True, cwd=ROOT, timeout=120, check=True)
    assert "LRS_MAX_DOCUMENT_CHARS" in json.loads(done.stdout)["error"]
    done = subprocess.run(command, capture_output=True, cwd=ROOT, timeout=120, check=True)
    assert "some words" in json.loads(done.stdout)["pages"][0]

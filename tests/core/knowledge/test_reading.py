"""Reading files into text: the types taken, safe names, any encoding, and the child process
that reads PDF, Word and HTML files."""

import pytest

from core.errors import DocumentError
from core.knowledge.reading import decode_text, display_name, extract, file_type_of
from tests.support.documents import docx_bytes, html_bytes, pdf_bytes


def test_decode_text_prefers_boms_then_utf8() -> None:
    assert decode_text("naïve".encode()) == "naïve"
    assert decode_text("naïve".encode("utf-16-be").join([b"\xfe\xff", b""])) == "naïve"
    assert decode_text("\ufeffhi".encode()) == "hi"


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.PDF", "pdf"), ("notes.markdown", "md"), ("page.htm", "html"), ("x.text", "txt")],
)
def test_file_types_are_known_by_their_extension(name: str, kind: str) -> None:
    assert file_type_of(name) == kind


@pytest.mark.parametrize(
    ("name", "message"), [("a.exe", "'.exe' is not one"), ("README", "no ext")]
)
def test_other_files_are_refused_in_plain_words(name: str, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        file_type_of(name)


def test_display_names_lose_folders_and_control_characters() -> None:
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("C:\\Users\\me\\report.pdf") == "report.pdf"
    assert display_name("bad\x00name\n.txt") == "badname.txt"
    assert display_name("...") == "unnamed"
    long = display_name("x" * 300 + ".pdf")
    assert len(long) <= 120 and long.endswith(".pdf")


def test_each_format_is_read_into_pages(tmp_path, settings) -> None:
    pdf = tmp_path / "a.pdf"
    pdf.write_bytes(pdf_bytes(["First page.", "Second page."]))
    pages = extract(pdf, "pdf", pdf.read_bytes(), settings)
    assert [n for n, _ in pages] == [1, 2] and "Second page." in pages[1][1]
    word = tmp_path / "a.docx"
    word.write_bytes(docx_bytes(["A Word paragraph."]))
    assert "A Word paragraph." in extract(word, "docx", word.read_bytes(), settings)[0][1]
    page = tmp_path / "a.html"
    data = html_bytes("Title", "Some <b>bold</b> words.")
    assert "bold" in extract(page, "html", data, settings)[0][1]
    assert extract(tmp_path / "a.txt", "txt", b"plain", settings) == [(0, "plain")]


def test_a_file_named_pdf_that_is_not_one_is_refused(tmp_path, settings) -> None:
    with pytest.raises(DocumentError, match="not a PDF"):
        extract(tmp_path / "x.pdf", "pdf", b"hello", settings)

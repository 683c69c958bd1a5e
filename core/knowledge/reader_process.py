"""Read the text of a PDF (page by page), a Word file or a web page in a child process with a
memory cap.

    python -m core.knowledge.reader_process FILE MEMORY_MB [pdf|docx|html] [MAX_CHARACTERS]

Prints one JSON object: {"pages": ["text of page 1", ...]} or {"error": "plain sentence"}.
A malformed PDF can make a parser loop or swallow memory, and a Word file is a zip that can
expand a thousandfold; here that kills only this process, and the parent (core.knowledge.ingest)
also stops it after a time limit. It uses the libraries behind LangChain's loaders directly (pypdf
for PyPDFLoader, docx2txt for Docx2txtLoader, BeautifulSoup), because importing LangChain would cost
this short-lived process more time than reading a typical file."""

from __future__ import annotations

import json
import sys


def _limit_memory(megabytes: int) -> None:
    try:
        import resource
    except ImportError:  # not on Windows; the parent's time limit still applies there
        return
    limit = megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def read_pages(path: str) -> dict[str, object]:
    from pypdf import PasswordType, PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # many "protected" PDFs open with an empty password
            except (FileNotDecryptedError, NotImplementedError, DependencyError):
                opened = PasswordType.NOT_DECRYPTED
            if not opened:
                return {
                    "error": "The PDF is password-protected: remove the password and add it again."
                }
        return {"pages": [page.extract_text() or "" for page in reader.pages]}
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as error:
        return {"error": f"The file is not a readable PDF ({type(error).__name__}: {error})."}


def read_docx(path: str) -> dict[str, object]:
    import zipfile

    import docx2txt

    if not zipfile.is_zipfile(path):
        return {"error": "The file is not a Word document, though its name ends in .docx."}
    try:
        return {"pages": [docx2txt.process(path) or ""]}
    except (KeyError, zipfile.BadZipFile, ValueError, OSError) as error:
        return {"error": f"The Word document could not be read ({error})."}


def read_html(path: str) -> dict[str, object]:
    from pathlib import Path

    from bs4 import BeautifulSoup

    # The parent wrote it as UTF-8, decoded the studio's way (reading.decode_text).
    soup = BeautifulSoup(Path(path).read_text(encoding="utf-8", errors="replace"), "html.parser")
    for hidden in soup(["script", "style", "noscript", "template"]):
        hidden.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    body = soup.get_text("\n", strip=True)
    return {"pages": [f"{title}\n\n{body}" if title and not body.startswith(title) else body]}


def too_much_text(characters: int, limit: int) -> str:
    """The message for a document past LRS_MAX_DOCUMENT_CHARS (core.knowledge.ingest uses it
    too)."""
    return (
        f"This file holds {characters:,} characters of text; the studio takes at most {limit:,} "
        "from one file (LRS_MAX_DOCUMENT_CHARS). Split it, or raise the limit."
    )


READERS = {"pdf": read_pages, "docx": read_docx, "html": read_html}
WHAT = {"pdf": "PDF", "docx": "Word document", "html": "web page"}


def main(path: str, megabytes: int, kind: str, max_characters: int) -> dict[str, object]:
    _limit_memory(megabytes)
    try:
        result = READERS[kind](path)
    except MemoryError:
        return {
            "error": f"Reading this {WHAT[kind]} needed more memory than allowed ({megabytes} MB, "
            "LRS_PARSE_MEMORY_MB); it may be damaged or be a zip bomb."
        }
    except RecursionError:
        return {"error": f"The {WHAT[kind]}'s structure is nested too deeply to read."}
    pages = result.get("pages")
    if isinstance(pages, list) and sum(len(p) for p in pages) > max_characters:
        return {"error": too_much_text(sum(len(p) for p in pages), max_characters)}
    return result


if __name__ == "__main__":
    arguments = sys.argv[1:]
    result = main(
        arguments[0],
        int(arguments[1]),
        arguments[2] if len(arguments) > 2 else "pdf",
        int(arguments[3]) if len(arguments) > 3 else 10**12,
    )
    sys.stdout.write(json.dumps(result))

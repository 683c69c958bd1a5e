"""Reading files into text: which types the studio takes, safe display names, text in any
encoding, and PDF, Word and HTML files read in a child process (core.knowledge.reader_process)
with a memory cap and a time limit, so that a crafted file costs only that process."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

from core.errors import DocumentError
from core.knowledge import reader_process
from core.settings import Settings

FILE_TYPES = {"pdf": "PDF", "txt": "Text", "md": "Markdown", "docx": "Word", "html": "HTML"}
_ALIASES = {"htm": "html", "markdown": "md", "text": "txt"}


def display_name(raw: str) -> str:
    """A file name safe to show and to store as text: no folders, control characters or NULs."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip().strip(".")
    if len(name) > 120:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 110 - len(ext)] + "…" + dot + ext) if dot and len(ext) <= 8 else name[:120]
    return name or "unnamed"


def file_type_of(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    ext = _ALIASES.get(ext, ext)
    if ext not in FILE_TYPES:
        raise DocumentError(
            "Only PDF, TXT, MD, DOCX and HTML files can be added"
            + (f"; '.{ext}' is not one of them." if ext else "; this file has no extension.")
        )
    return ext


def decode_text(data: bytes) -> str:
    """Text from bytes in whatever encoding they are: BOMs, UTF-8, then a detected guess."""
    from charset_normalizer import from_bytes

    boms = [
        (b"\xef\xbb\xbf", "utf-8-sig"),
        (b"\xff\xfe\x00\x00", "utf-32"),
        (b"\x00\x00\xfe\xff", "utf-32"),
        (b"\xff\xfe", "utf-16"),
        (b"\xfe\xff", "utf-16"),
    ]
    for bom, encoding in boms:
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if b"\x00" in data[:4096]:
        raise DocumentError("The file does not look like text: it holds binary data.")
    matches = list(from_bytes(data))
    if not matches:
        raise DocumentError("The file does not look like text: no text encoding fits it.")
    # Short Western text fits several code pages equally well (é is č in cp1250); among the
    # equally good guesses prefer Windows-1252, by far the most common legacy one.
    tied = [m for m in matches if m.chaos <= matches[0].chaos]
    western = [m for m in tied if m.encoding in ("cp1252", "latin_1", "iso8859_15")]
    return str((western or tied)[0])


def _read_apart(path: Path, file_type: str, settings: Settings) -> list[str]:
    """The text of a PDF, Word file or web page, read by `core.knowledge.reader_process` in a child
    process with a memory cap, a time limit and a cap on characters: a crafted file costs only that
    process."""
    what = reader_process.WHAT[file_type]
    try:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "core.knowledge.reader_process", str(path)),
                *(str(settings.parse_memory_mb), file_type, str(settings.max_document_chars)),
            ],
            capture_output=True,
            timeout=settings.parse_timeout_s,
            cwd=Path(__file__).resolve().parents[2],  # the repository
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DocumentError(
            f"Reading the {what} took longer than {settings.parse_timeout_s} s, so it was "
            "stopped; the file may be damaged."
        ) from None
    try:
        result = json.loads(done.stdout or b"{}")
    except json.JSONDecodeError:
        result = {}
    if "pages" not in result:
        raise DocumentError(
            result.get("error")
            or f"Reading the {what} failed (it needed too much memory or crashed); it may be "
            "damaged."
        )
    return list(result["pages"])


def extract(path: Path, file_type: str, data: bytes, settings: Settings) -> list[tuple[int, str]]:
    """(page number, text) pairs; page 0 means the format has no pages."""
    if file_type == "pdf":
        if not data[:1024].lstrip().startswith(b"%PDF"):
            raise DocumentError("The file is not a PDF, though its name ends in .pdf.")
        return [(n, text) for n, text in enumerate(_read_apart(path, "pdf", settings), 1)]
    if file_type == "html":
        path.write_text(decode_text(data), encoding="utf-8")
    if file_type in ("docx", "html"):
        return [(0, text) for text in _read_apart(path, file_type, settings)]
    text = decode_text(data)
    if len(text) > settings.max_document_chars:
        raise DocumentError(reader_process.too_much_text(len(text), settings.max_document_chars))
    return [(0, text)]

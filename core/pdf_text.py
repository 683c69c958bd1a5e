"""Read the text of a PDF, page by page, in a child process with a memory cap.

    python -m core.pdf_text FILE MEMORY_MB

Prints one JSON object: {"pages": ["text of page 1", ...]} or {"error": "plain sentence"}.
A malformed PDF can make a parser loop or swallow memory; here that kills only this process, and
the parent (core.ingest) also stops it after a time limit. It uses pypdf directly, the library
behind LangChain's PyPDFLoader, because importing LangChain would cost this short-lived process
more time than reading a typical PDF.
"""

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
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # many "protected" PDFs open with an empty password
            except (FileNotDecryptedError, NotImplementedError, DependencyError):
                opened = 0
            if not opened:
                return {
                    "error": "The PDF is password-protected: remove the password and add it again."
                }
        return {"pages": [page.extract_text() or "" for page in reader.pages]}
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as error:
        return {"error": f"The file is not a readable PDF ({type(error).__name__}: {error})."}


if __name__ == "__main__":
    _limit_memory(int(sys.argv[2]))
    try:
        result = read_pages(sys.argv[1])
    except MemoryError:
        result = {"error": "Reading this PDF needed more memory than allowed; it may be damaged."}
    except RecursionError:
        result = {"error": "The PDF's structure is nested too deeply to read; it may be damaged."}
    sys.stdout.write(json.dumps(result))

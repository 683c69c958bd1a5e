"""Build test documents in every supported format, and broken ones, without shipping binaries."""

from __future__ import annotations

import io


def pdf_bytes(pages: list[str]) -> bytes:
    """A real PDF with one page per string, with a text layer."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


def scanned_pdf_bytes() -> bytes:
    """A PDF whose only page is a picture: no text layer, like a scan."""
    from fpdf import FPDF
    from PIL import Image

    image = Image.new("RGB", (200, 100), "white")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    pdf = FPDF()
    pdf.add_page()
    pdf.image(io.BytesIO(buffer.getvalue()), x=10, y=10, w=100)
    return bytes(pdf.output())


def encrypted_pdf_bytes(text: str, password: str = "s3cret") -> bytes:  # noqa: S107
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes([text]))))
    writer.encrypt(user_password=password, algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def docx_bytes(paragraphs: list[str]) -> bytes:
    from docx import Document

    document = Document()
    for text in paragraphs:
        document.add_paragraph(text)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def html_bytes(title: str, body: str) -> bytes:
    return (
        f"<html><head><title>{title}</title><style>p {{color: red}}</style>"
        f"<script>alert('x')</script></head><body><h1>{title}</h1><p>{body}</p></body></html>"
    ).encode()

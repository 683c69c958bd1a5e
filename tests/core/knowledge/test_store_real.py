"""The knowledge base with the real embedded search model (all-MiniLM-L6-v2)."""

import pytest

from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.retrieve import search
from core.knowledge.store import KnowledgeStore
from core.model import loading
from core.settings import Settings
from tests.support.documents import docx_bytes, pdf_bytes

pytestmark = pytest.mark.slow


def test_real_embeddings_find_paraphrased_questions_on_the_right_page(tmp_path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)
    embeddings = loading.load_embeddings(settings)
    assert len(embeddings.embed_query("hello")) == 384
    kb = KnowledgeStore(settings, embeddings).create("Integration")
    files = [
        UploadedFile(
            "employee-guide.pdf",
            pdf_bytes(
                [
                    "Chapter 1. Welcome to the company and its history since 1952.",
                    "Chapter 2. Holidays. Every employee is entitled to 28 days of paid leave.",
                    "Chapter 3. Expenses. Travel costs are reimbursed within 45 days.",
                ]
            ),
        ),
        UploadedFile("canteen.docx", docx_bytes(["The canteen serves lunch from noon to two."])),
    ]
    events = [e for e in ingest(kb, files, ChunkSettings()) if e.status == "added"]
    assert len(events) == 2
    vacation = search(kb, "How much vacation do I get?", top_k=2).passages[0]
    assert vacation.citation == "employee-guide.pdf, page 2"
    food = search(kb, "When can I eat at midday?", top_k=1).passages[0]
    assert food.source == "canteen.docx"

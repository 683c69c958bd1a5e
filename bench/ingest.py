"""Our ingestion against a plain LangChain pipeline, on real multi-page PDFs plus text files.

Plain: PyPDFLoader / TextLoader -> RecursiveCharacterTextSplitter -> HuggingFaceEmbeddings ->
Chroma.from_documents, with the same chunking and the same embedding model. Ours:
core.knowledge.ingest into a knowledge base. Both start with the model loaded, so model loading is
not measured. Also measured: re-adding the unchanged files, and recall@4 of our fused retrieval
against dense-only search on questions about the documents.

The PDFs are R's manuals from Debian's r-doc-pdf package (fetched with `apt-get download` once,
into data/bench/); the text files are the licences in /usr/share/common-licenses.

    .venv/bin/python bench/ingest.py [--manuals R-intro R-data R-FAQ]

Prints one JSON line; "ratio" is our passages/s over the plain pipeline's, "target" 1.5.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.retrieve import dense_search, search
from core.knowledge.store import KnowledgeStore
from core.model import loading
from core.settings import load_settings
from tests.support.restart import forget_chroma_clients

QUICK_HELP = "a few seconds on tiny inputs, the same code path (the test command runs it)"

CACHE = Path(__file__).resolve().parents[1] / "data" / "bench"
TEXTS = ["GPL-3", "Apache-2.0", "MPL-2.0"]
# (question, a string the right passage contains)
QUESTIONS = [
    ("How do I quit an R session?", "q()"),
    ("Which function reads an entire data frame directly from a file?", "read.table"),
    ("How can I send the output of commands to a file instead of the console?", "sink("),
    ("How do I remove objects from the workspace?", "rm("),
    ("How do I generate a sequence of numbers with a given step?", "seq("),
    ("What is CRAN?", "Comprehensive R Archive Network"),
    ("Where is the command history saved at the end of a session?", ".Rhistory"),
    ("Which functions read comma-separated files?", "read.csv"),
    ("Which package connects R to databases through ODBC?", "RODBC"),
    ("How do I install add-on packages from the Internet?", "install.packages"),
    ("How do I change the order of the dimensions of an array?", "aperm"),
    ("How do I get help on a function such as solve?", "help(solve)"),
    ("How do I fit a linear regression model?", "lm("),
    ("How can I mix R code and LaTeX documentation?", "Sweave"),
]


def manuals(names: list[str]) -> list[Path]:
    folder = CACHE / "r-doc-pdf"
    wanted = [folder / "usr/share/R/doc/manual" / f"{name}.pdf" for name in names]
    if not all(p.exists() for p in wanted):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as scratch:
            subprocess.run(["apt-get", "download", "r-doc-pdf"], cwd=scratch, check=True)
            deb = next(Path(scratch).glob("r-doc-pdf_*.deb"))
            subprocess.run(["dpkg", "-x", str(deb), str(folder)], check=True)
    return wanted


def quick_files(folder: Path) -> tuple[list[Path], list[Path]]:
    from tests.support.documents import pdf_bytes

    pages = [
        f"Page {n}. To quit an R session call q(). Data frames are read with read.table and "
        "read.csv; rm() removes objects and seq() makes sequences. " * 3
        for n in range(1, 9)
    ]
    pdf, text = folder / "R-quick.pdf", folder / "notes"
    pdf.write_bytes(pdf_bytes(pages))
    text.write_text("CRAN is the Comprehensive R Archive Network.\n\n" * 20)
    return [pdf], [text]


def plain_pipeline(pdfs: list[Path], texts: list[Path], embeddings, chunking, folder) -> dict:
    import chromadb
    from langchain_chroma import Chroma
    from langchain_community.document_loaders import PyPDFLoader, TextLoader
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    start = time.perf_counter()
    documents = []
    for pdf in pdfs:
        documents += PyPDFLoader(str(pdf)).load()
    for text in texts:
        documents += TextLoader(str(text), encoding="utf-8").load()
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=chunking.chunk_size, chunk_overlap=chunking.chunk_overlap, add_start_index=True
    )
    chunks = splitter.split_documents(documents)
    client = chromadb.PersistentClient(path=str(folder))
    Chroma.from_documents(chunks, embeddings, client=client, collection_name="plain")
    return {"seconds": time.perf_counter() - start, "passages": len(chunks)}


def recall_at_4(kb, finder) -> float:
    hits = 0
    for question, answer in QUESTIONS:
        passages = finder(kb, question)
        hits += any(answer.lower() in p.text.lower() for p in passages)
    return hits / len(QUESTIONS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manuals", nargs="+", default=["R-intro", "R-data", "R-FAQ"])
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        if args.quick:  # a small made-up manual instead of the downloaded ones
            pdfs, texts = quick_files(Path(scratch))
        else:
            pdfs = manuals(args.manuals)
            texts = [Path("/usr/share/common-licenses") / n for n in TEXTS]
            texts = [t for t in texts if t.exists()]
        settings = load_settings(data_dir=Path(scratch) / "data")
        chunking = ChunkSettings.from_settings(settings)

        # The plain pipeline: HuggingFaceEmbeddings as LangChain's docs set it up.
        from langchain_huggingface import HuggingFaceEmbeddings

        plain_embeddings = HuggingFaceEmbeddings(model_name=loading.embedding_model_path(settings))
        plain_embeddings.embed_query("warm up")
        plain = plain_pipeline(pdfs, texts, plain_embeddings, chunking, Path(scratch) / "plain")

        our_embeddings = loading.load_embeddings(settings)
        our_embeddings.embed_query("warm up")
        kb = KnowledgeStore(settings, our_embeddings).create("Bench")
        files = [UploadedFile(p.name, p.read_bytes()) for p in pdfs]
        files += [UploadedFile(f"{p.name}.txt", p.read_bytes()) for p in texts]
        start = time.perf_counter()
        events = [e for e in ingest(kb, files, chunking) if e.status in ("added", "failed")]
        ours_s = time.perf_counter() - start
        failed = [e.message for e in events if e.status == "failed"]
        start = time.perf_counter()
        again = [e.status for e in ingest(kb, files, chunking) if e.status == "skipped"]
        readd_s = time.perf_counter() - start
        passages = kb.passage_count()
        pages = sum(d.pages for d in kb.documents() if d.file_type == "pdf")

        fused = recall_at_4(kb, lambda kb, q: search(kb, q, top_k=4).passages)
        dense = recall_at_4(kb, lambda kb, q: dense_search(kb, q, top_k=4))
        forget_chroma_clients()

    ours_rate, plain_rate = passages / ours_s, plain["passages"] / plain["seconds"]
    print(
        json.dumps(
            {
                "benchmark": "ingest",
                "files": len(files),
                "pdf_pages": pages,
                "failed": failed,
                "passages_ours": passages,
                "passages_plain": plain["passages"],
                "ours_s": round(ours_s, 2),
                "plain_s": round(plain["seconds"], 2),
                "ours_passages_per_s": round(ours_rate, 1),
                "plain_passages_per_s": round(plain_rate, 1),
                "ours_pages_per_s": round(pages / ours_s, 1),
                "readd_unchanged_s": round(readd_s, 3),
                "readd_fraction_of_first": round(readd_s / ours_s, 4),
                "readd_skipped": len(again),
                "recall_at_4_fused": round(fused, 3),
                "recall_at_4_dense": round(dense, 3),
                "ratio": round(ours_rate / plain_rate, 3),
                "target": 1.5,
            }
        )
    )


if __name__ == "__main__":
    main()

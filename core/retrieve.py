"""Find the passages that answer a question: meaning (dense vectors) and keywords (BM25), fused.

Dense search finds paraphrases; BM25 finds exact names, codes and numbers that embeddings blur.
Reciprocal rank fusion (Cormack et al., 2009) merges the two rankings without having to compare
their scores. This is the retrieval the RAG and hybrid modes call.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from core.knowledge import KnowledgeBase

RRF_K = 60  # the constant from the RRF paper; it damps the weight of the very first ranks
_WORD = re.compile(r"\w+", re.UNICODE)
_bm25_cache: dict[tuple[str, str, int], Any] = {}
_bm25_lock = threading.Lock()


@dataclass(frozen=True)
class Passage:
    """A retrieved passage with where it came from and why it was found."""

    text: str
    source: str
    page: int  # 0 when the file type has no pages
    passage: int
    doc_id: str
    score: float  # fused RRF score: higher is better
    similarity: float | None  # cosine similarity to the question, when dense search found it
    found_by: tuple[str, ...]  # "meaning", "keywords"

    @property
    def citation(self) -> str:
        return f"{self.source}, page {self.page}" if self.page else self.source


@dataclass(frozen=True)
class SearchResult:
    passages: list[Passage]
    seconds: float


def keyword_tokens(text: str) -> list[str]:
    return [word.casefold() for word in _WORD.findall(text)]


def _bm25(kb: KnowledgeBase) -> Any:
    """A BM25 index over the knowledge base's passages, rebuilt only when they change."""
    from langchain_community.retrievers import BM25Retriever
    from langchain_core.documents import Document

    key = (kb.settings.data_dir.as_posix(), kb.collection_name, kb.revision)
    with _bm25_lock:
        if key in _bm25_cache:
            return _bm25_cache[key]
    stored = kb.store.get(include=["documents", "metadatas"])
    documents = [
        Document(page_content=text, metadata=meta, id=passage_id)
        for passage_id, text, meta in zip(
            stored["ids"], stored["documents"], stored["metadatas"], strict=True
        )
    ]
    index = (
        BM25Retriever.from_documents(documents, preprocess_func=keyword_tokens)
        if documents
        else None
    )
    with _bm25_lock:
        for stale in [k for k in _bm25_cache if k[:2] == key[:2]]:
            del _bm25_cache[stale]
        _bm25_cache[key] = index
    return index


def forget(collection_name: str) -> None:
    """Drop the keyword index of a collection that is gone."""
    with _bm25_lock:
        for stale in [k for k in _bm25_cache if k[1] == collection_name]:
            del _bm25_cache[stale]


def search(kb: KnowledgeBase, query: str, top_k: int = 4, candidates: int = 20) -> SearchResult:
    """The `top_k` best passages for `query`, from complete documents only."""
    start = time.perf_counter()
    query = query.strip()
    if not query:
        return SearchResult([], 0.0)
    complete = {d.doc_id for d in kb.documents() if d.status == "complete"}
    if not complete:
        return SearchResult([], time.perf_counter() - start)
    pool = max(candidates, top_k * 4)

    dense = kb.store.similarity_search_with_score(query, k=pool)
    index = _bm25(kb)
    keyword = []
    if index is not None:
        index.k = pool
        keyword = [
            d
            for d in index.invoke(query)
            if set(keyword_tokens(query)) & set(keyword_tokens(d.page_content))
        ]

    # Reciprocal rank fusion. (LangChain's EnsembleRetriever fuses the same way but drops the
    # scores and the "found by" that the search preview shows.)
    fused: dict[str, dict[str, Any]] = {}
    for rank, (doc, distance) in enumerate(dense, start=1):
        entry = fused.setdefault(doc.id or "", {"doc": doc, "score": 0.0, "by": [], "sim": None})
        entry["score"] += 1 / (RRF_K + rank)
        entry["by"].append("meaning")
        entry["sim"] = 1 - float(distance)  # cosine distance -> similarity
    for rank, doc in enumerate(keyword, start=1):
        entry = fused.setdefault(doc.id or "", {"doc": doc, "score": 0.0, "by": [], "sim": None})
        entry["score"] += 1 / (RRF_K + rank)
        entry["by"].append("keywords")

    ranked = sorted(fused.values(), key=lambda e: e["score"], reverse=True)
    passages = []
    for entry in ranked:
        meta = entry["doc"].metadata
        if meta.get("doc_id") not in complete:
            continue
        passages.append(
            Passage(
                text=entry["doc"].page_content,
                source=str(meta.get("source", "")),
                page=int(meta.get("page", 0) or 0),
                passage=int(meta.get("passage", 0)),
                doc_id=str(meta.get("doc_id")),
                score=entry["score"],
                similarity=entry["sim"],
                found_by=tuple(entry["by"]),
            )
        )
        if len(passages) == top_k:
            break
    return SearchResult(passages, time.perf_counter() - start)


def dense_search(kb: KnowledgeBase, query: str, top_k: int = 4) -> list[Passage]:
    """Dense-only search: the baseline the benchmark compares fused retrieval against."""
    results = kb.store.similarity_search_with_score(query, k=top_k)
    return [
        Passage(
            doc.page_content,
            str(doc.metadata.get("source", "")),
            int(doc.metadata.get("page", 0) or 0),
            int(doc.metadata.get("passage", 0)),
            str(doc.metadata.get("doc_id")),
            1 - float(distance),
            1 - float(distance),
            ("meaning",),
        )
        for doc, distance in results
    ]

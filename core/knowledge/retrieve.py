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

from core.knowledge.store import KnowledgeBase
from core.memory import release_freed_memory

RRF_K = 60  # the constant from the RRF paper; it damps the weight of the very first ranks
_WORD = re.compile(r"\w+", re.UNICODE)
_bm25_cache: dict[tuple[str, str, str, int], KeywordIndex] = {}
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


@dataclass(frozen=True)
class KeywordIndex:
    """A BM25 index (bm25s) over one revision of a knowledge base's passages. Immutable once
    built: every session and thread may search it at once."""

    bm25: Any
    documents: tuple[Any, ...]  # langchain Documents, in the index's order

    def top(self, query: str, k: int) -> list[Any]:
        """The passages sharing at least one word with `query`, best first, at most `k`."""
        tokens = keyword_tokens(query)
        if not tokens or not self.documents:
            return []
        found, scores = self.bm25.retrieve(
            [tokens], k=min(k, len(self.documents)), show_progress=False, n_threads=1
        )
        return [
            self.documents[int(i)]
            for i, score in zip(found[0], scores[0], strict=True)
            if score > 0
        ]


_KEPT_INDEXES = 16  # knowledge bases whose index stays in memory at once


def keyword_index(kb: KnowledgeBase) -> KeywordIndex:
    """The keyword index of the knowledge base as it is now: built once per revision (an
    addition or a deletion makes a new one), shared by every session."""
    import bm25s
    from langchain_core.documents import Document

    meta = kb.catalog.get_meta()
    # The creation time tells apart a knowledge base made again under an old name.
    key = (
        kb.settings.data_dir.as_posix(),
        kb.collection_name,
        meta.get("created", ""),
        kb.revision,
    )
    with _bm25_lock:
        if key in _bm25_cache:
            return _bm25_cache[key]
    stored = kb.store.get(include=["documents", "metadatas"])
    documents = tuple(
        Document(page_content=text, metadata=meta, id=passage_id)
        for passage_id, text, meta in zip(
            stored["ids"], stored["documents"], stored["metadatas"], strict=True
        )
    )
    bm25 = bm25s.BM25()
    if documents:
        bm25.index([keyword_tokens(d.page_content) for d in documents], show_progress=False)
    index = KeywordIndex(bm25, documents)
    with _bm25_lock:
        for stale in [k for k in _bm25_cache if k[:3] == key[:3]]:
            del _bm25_cache[stale]  # an older revision of the same knowledge base
        _bm25_cache[key] = index
        while len(_bm25_cache) > _KEPT_INDEXES:
            del _bm25_cache[next(iter(_bm25_cache))]  # the oldest one built
    release_freed_memory()  # the passages' tokens, read once to build it
    return index


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
    keyword = keyword_index(kb).top(query, pool)

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

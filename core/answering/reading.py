"""What the reading modes read: the sentences of the retrieved passages that answer the question.

A small model given four whole passages (about 800 tokens) answers from the wrong one, makes up
a neighbouring number or lists the passages' titles. Given the one or two sentences that matter,
it mostly copies the fact. So the passages found (all of them still shown as the sources) are cut
into sentences, and the sentences closest in meaning to the question are kept: the best one, and
up to MOST in all of those scoring within MARGIN of it, the best nearest the question.

Measured with bench/quality.py on documents and paraphrased questions written for it (a dev set
to choose on, a test set to report; default model, greedy): the best sentence held the answer for
88-90% of the questions whose passages held it, and every setting here was chosen on the dev set.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.knowledge.retrieve import Passage, keyword_tokens

MIN_CHARS = 16  # shorter pieces (headings, list markers) are no sentence to answer from
MARGIN = 0.05  # in cosine similarity: sentences this close to the best are kept too
MOST = 3
KEYWORD_WEIGHT = 0.3  # share of the question's words a sentence contains, added to its score
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# A full stop that ends a title or an abbreviation, not a sentence ("Dr. Tomasz Wierzbicki": cut
# there, the sentence naming the lab's safety officer lost the name in the dev set).
_ABBREVIATION = re.compile(
    r"(?:^|[\s(])(?:[A-Z]|Dr|Mr|Mrs|Ms|Prof|Rev|St|Mt|No|Nr|Fig|Jr|Sr|Inc|Ltd|Co|vs|approx|ca|"
    r"e\.g|i\.e|cf)\.$"
)
_CACHED = 4096  # sentence vectors kept: the same passages come back for related questions


@dataclass(frozen=True)
class Sentence:
    text: str
    passage: int  # the number of its passage, as the sources list shows it (from 1)


def sentences(text: str) -> list[str]:
    """`text` cut into sentences and lines, without its Markdown headings (a document's or a
    section's title names what follows and answers nothing; in the dev set a title sharing the
    question's words won over the sentence that answered); a passage with none long enough stays
    whole."""
    pieces: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for part in _SENTENCE_END.split(line):
            if pieces and _ABBREVIATION.search(pieces[-1]):
                pieces[-1] = f"{pieces[-1]} {part}"
            else:
                pieces.append(part)
    pieces = [piece.strip(" \t#*->") for piece in pieces]
    found = [piece for piece in pieces if len(piece) >= MIN_CHARS]
    return found or ([" ".join(text.split())] if text.strip() else [])


class _Vectors:
    """Sentence vectors by text, least recently used out first, for one embeddings object."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._vectors: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()

    def get(self, embeddings: Any, texts: Sequence[str]) -> np.ndarray:
        owner = id(embeddings)
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if (owner, t) not in self._vectors]
        if missing:
            computed = _unit(np.asarray(embeddings.embed_documents(missing), dtype=np.float32))
            with self._lock:
                for text, vector in zip(missing, computed, strict=True):
                    self._vectors[(owner, text)] = vector
                while len(self._vectors) > _CACHED:
                    self._vectors.popitem(last=False)
        with self._lock:
            for text in texts:
                self._vectors.move_to_end((owner, text))
            return np.stack([self._vectors[(owner, text)] for text in texts])


_vectors = _Vectors()


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.clip(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12, None)


def select(question: str, passages: Sequence[Passage], embeddings: Any) -> list[Sentence]:
    """The sentences of `passages` that answer `question`, best last (nearest the question)."""
    found = list(
        dict.fromkeys(
            Sentence(text, number)
            for number, passage in enumerate(passages, 1)
            for text in sentences(passage.text)
        )
    )
    if not found:
        return []
    vectors = _vectors.get(embeddings, [s.text for s in found])
    asked = _unit(np.asarray(embeddings.embed_query(question), dtype=np.float32))
    words = set(keyword_tokens(question))
    shared = np.array(
        [len(words & set(keyword_tokens(s.text))) / max(1, len(words)) for s in found]
    )
    scores = vectors @ asked + KEYWORD_WEIGHT * shared
    order = np.argsort(-scores, kind="stable")
    best = scores[order[0]]
    kept = [found[i] for i in order[:MOST] if scores[i] >= best - MARGIN]
    return kept[::-1]

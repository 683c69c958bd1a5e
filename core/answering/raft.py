"""Training rows that teach the model to use your documents (RAFT: Zhang et al. 2024, "RAFT:
Adapting Language Model to Domain Specific RAG").

Each row is one question as the hybrid mode asks it: the sentences retrieval finds for it
(core.answering.reading, the same search and selection as at answer time), among them the one
that holds the answer (the "oracle") and others that do not (the distractors), and the answer
taken from the oracle with its passage number. RAFT also trains on rows whose sentences lack
the answer (`without_oracle`); with the default small model that did harm, so by default there
are none (see WITHOUT_ORACLE).

The questions come from a question set with reference answers (the Evaluate page's format) and,
from the knowledge base alone, from its sentences that state a fact (an amount, a date, a time,
a code, a phone number, a name): the sentence with the fact left blank is the question.
Questions held out for evaluation never become training rows.

The rows leave out the worked examples the reading modes put first (core.answering.modes): they
would triple what each row costs to train. The hybrid mode still asks with them: measured with
bench/quality.py, the adapter read better with the examples than without (hybrid right on 81%
of the held-out questions against 77%). Its dataset's shape is `DOCUMENTS_SHAPE`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from core.answering.modes import reading_message
from core.answering.reading import Sentence, select, sentences
from core.knowledge.retrieve import search
from core.knowledge.store import KnowledgeBase
from core.text_match import contains, normalise
from core.training.datasets import DOCUMENTS_SHAPE, Dataset, parse_dataset

# RAFT's share of rows whose sentences lack the answer (its 1 - P). Measured with
# bench/quality.py on the default model: 20% such rows answering anyway taught it to make
# numbers up, 10% answering NOT_FOUND taught it to give up on names (hybrid 0.79 and 0.77 right,
# RAG 0.79); with none, see the figures there.
WITHOUT_ORACLE = 0.0
NOT_FOUND = "The passages do not say."  # what such a row answers
SHOWN = 3  # sentences per row, as core.answering.reading.MOST shows at most
MAX_FACTS = 400  # fact sentences taken from the knowledge base (spread over its documents)
MAX_SCANNED = 2000  # passages read to find them
# A fact a sentence states: a phone number, an amount with its unit or currency, a time, a date,
# a code, a number. Each one found is left blank in a question of its own.
_NUMBER = r"\d(?:[\d,.]*\d)?"
_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
)
_FACT = re.compile(
    r"\+?\d{2,4}(?: \d{2,4}){2,}\b"  # a phone number: 0800 555 0199, +43 316 48 20 20
    rf"|(?:EUR|USD|GBP|CHF|[$€£])\s?{_NUMBER}"
    rf"|{_NUMBER}\s?(?:%|per ?cent|euros?|dollars?|pounds?|days?|weeks?|months?|years?|hours?|"
    r"minutes?|seconds?|kg|g|km|m|cm|mm|ml|°C|degrees|litres?|liters?|GB|MB|people|persons|"
    r"visits|times|characters)(?!\w)"
    r"|\b\d{1,2}:\d{2}\b"
    rf"|\b\d{{1,2}} {_MONTH}(?: \d{{4}})?\b"
    rf"|\b{_MONTH} \d{{1,2}}(?:, \d{{4}})?\b"
    r"|\b[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)+\b"  # a code with dashes, whole: HX-V1, BLUE-42
    r"|\b[A-Z]{1,5}\d[\w-]*\b"
    rf"|\b{_NUMBER}\b"
    r"|(?<=[a-z,;:] )[A-Z][a-z]+(?: [A-Z][a-z]+)+\b"  # a name, not a sentence's first words
)
_PER_SENTENCE = 2  # facts asked of one sentence
QUESTION_VARIANTS = 2  # rows per question of the user's set: their shape is the one that matters
_MIN_WORDS = 6  # a shorter sentence gives no question worth asking


class Question(Protocol):
    """A question with its reference answer (the Evaluate page's EvalItem is one)."""

    @property
    def question(self) -> str: ...

    @property
    def reference(self) -> str: ...

    @property
    def answers(self) -> list[str]: ...  # every answer that counts as right, reference first


@dataclass(frozen=True)
class Fact:
    """A question the knowledge base asks of itself: a sentence with its fact left blank."""

    question: str
    reference: str
    origin: str = ""  # the file it came from

    @property
    def answers(self) -> list[str]:
        return [self.reference]


@dataclass(frozen=True)
class Row:
    """One training row: what the model reads, and what it should answer."""

    question: str
    sentences: tuple[Sentence, ...]
    answer: str
    oracle: int | None  # the position in `sentences` of the one that answers; None: none does
    accepted: tuple[str, ...] = ()


@dataclass
class Rows:
    rows: list[Row] = field(default_factory=list)
    skipped: int = 0  # questions whose answer no retrieved passage held
    from_questions: int = 0  # rows from the user's questions (the rest: the documents' facts)

    @property
    def questions(self) -> set[str]:
        return {normalise(r.question) for r in self.rows}


def fact_questions(kb: KnowledgeBase, limit: int = MAX_FACTS, seed: int = 0) -> list[Fact]:
    """Questions from the knowledge base alone: each sentence that states a fact, with the fact
    left blank, asks for it."""
    got = kb.collection.get(include=["documents", "metadatas"], limit=MAX_SCANNED)
    found: list[Fact] = []
    seen: set[str] = set()
    for text, meta in zip(got["documents"] or [], got["metadatas"] or [], strict=False):
        origin = str((meta or {}).get("source", ""))
        for sentence in sentences(text):
            sentence = " ".join(sentence.split())
            if len(sentence.split()) < _MIN_WORDS or sentence in seen:
                continue
            seen.add(sentence)
            for match in list(_FACT.finditer(sentence))[:_PER_SENTENCE]:
                blank = f"{sentence[: match.start()]}___{sentence[match.end() :]}"
                found.append(
                    Fact(f'What goes in the blank? "{blank}"', match.group(0).strip(), origin)
                )
    random.Random(seed).shuffle(found)  # noqa: S311 - a reproducible mix, not a secret
    return found[:limit]


def build(
    kb: KnowledgeBase,
    items: Sequence[Question],
    *,
    held_out: Iterable[str] = (),
    top_k: int = 4,
    seed: int = 0,
    variants: int = 1,
    without_oracle: float = WITHOUT_ORACLE,
) -> Rows:
    """RAFT rows for `items` (questions with reference answers), `variants` per question (each
    with its own distractors and order), never for a question of `held_out`."""
    keep_out = {normalise(q) for q in held_out}
    rng = random.Random(seed)  # noqa: S311 - a reproducible mix, not a secret
    built = Rows()
    for item in items:
        if normalise(item.question) in keep_out:
            continue
        found = _found(kb, item, top_k)  # searched once, however many variants
        if found is None:
            built.skipped += 1
            continue
        built.rows += [_row(item, *found, rng, without_oracle) for _ in range(variants)]
    return built


def training_rows(
    kb: KnowledgeBase,
    questions: Sequence[Question] = (),
    *,
    held_out: Iterable[str] = (),
    top_k: int = 4,
    seed: int = 0,
) -> Rows:
    """What "Teach it to use your documents" trains on: the user's questions (QUESTION_VARIANTS
    rows each), and the facts the knowledge base states."""
    held = list(held_out)
    asked = build(kb, questions, held_out=held, top_k=top_k, seed=seed, variants=QUESTION_VARIANTS)
    facts = build(kb, fact_questions(kb, seed=seed), held_out=held, top_k=top_k, seed=seed)
    return Rows(asked.rows + facts.rows, asked.skipped + facts.skipped, len(asked.rows))


def _found(
    kb: KnowledgeBase, item: Question, top_k: int
) -> tuple[Sentence, list[Sentence], list[Sentence]] | None:
    """What retrieval finds for `item`: the sentence that answers it, the selected sentences
    that do not, and the other sentences of the passages found that do not; None when no
    passage found holds the answer."""
    accepted = item.answers
    passages = search(kb, item.question, top_k).passages
    if not passages:
        return None
    chosen = select(item.question, passages, kb.store.embeddings)
    every = [
        Sentence(" ".join(text.split()), number)
        for number, passage in enumerate(passages, start=1)
        for text in sentences(passage.text)
    ]
    answering = [s for s in chosen if contains(s.text, accepted)]
    if not answering:  # the selection missed it: the sentence of a retrieved passage that has it
        answering = [s for s in every if contains(s.text, accepted)][:1]
    if not answering:
        return None
    oracle = answering[-1]  # the selection puts its best last
    distractors = [s for s in chosen if not contains(s.text, accepted)]
    others = [s for s in every if not contains(s.text, accepted) and s not in distractors]
    return oracle, distractors, others


def _row(
    item: Question,
    oracle: Sentence,
    selected: list[Sentence],
    others: list[Sentence],
    rng: random.Random,
    without_oracle: float,
) -> Row:
    """One row: the oracle among distractors (the selected ones first), in a random order."""
    accepted = item.answers
    others = others[:]
    rng.shuffle(others)
    distractors = (selected + others)[: SHOWN - 1]
    if rng.random() < without_oracle and distractors:
        shown = list(distractors)
        rng.shuffle(shown)
        return Row(item.question, tuple(shown), NOT_FOUND, None, tuple(accepted))
    shown = [*distractors, oracle]
    rng.shuffle(shown)
    answer = f"{_answer(item.reference)} [{oracle.passage}]."
    return Row(item.question, tuple(shown), answer, shown.index(oracle), tuple(accepted))


def _answer(reference: str) -> str:
    return reference.strip().rstrip(".")


def jsonl(rows: Sequence[Row]) -> bytes:
    """The rows as a chat-messages JSONL dataset, each as the hybrid mode asks it."""
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": reading_message(row.question, row.sentences)},
                    {"role": "assistant", "content": row.answer},
                ]
            }
        )
        for row in rows
    ]
    return "\n".join(lines).encode()


def dataset(rows: Sequence[Row], name: str) -> Dataset:
    """The rows as a training dataset: what the Fine-tune page previews, checks and trains on
    like any other."""
    parsed = parse_dataset(f"{name}.jsonl", jsonl(rows))
    parsed.shape = DOCUMENTS_SHAPE
    return parsed

"""Evaluation sets: questions with reference answers, from a file, from the knowledge base's
passages, or from the held-out part of a fine-tune dataset; and which of them the adapter saw.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.answering.modes import asked_question
from core.errors import InvalidInputError, StudioError
from core.knowledge.retrieve import Passage
from core.knowledge.store import KnowledgeBase
from core.model.chat import ChatModel, ChatRequest, Message, SamplingParams
from core.settings import Settings
from core.text_match import normalise
from core.training import run_folder
from core.training.config import split
from core.training.datasets import Problem, decode_text, last_turns, read_rows
from core.training.jobs import run_path

MAX_QUESTIONS = 500
_QUESTION_KEYS = ("question", "query", "prompt", "instruction")
_REFERENCE_KEYS = (
    "reference",
    "reference_answer",
    "answer",
    "ground_truth",
    "output",
    "completion",
)
_ACCEPTED_KEYS = ("accepted", "accepted_answers", "answers", "aliases")
CSV_COLUMNS = (
    ("question", "reference"),
    ("question", "answer"),
    ("question", "reference_answer"),
    ("prompt", "completion"),
    ("instruction", "output"),
)


@dataclass
class EvalItem:
    """One question, the answer it should get, and other answers that also count as right."""

    question: str
    reference: str
    accepted: list[str] = field(default_factory=list)
    origin: str = ""  # where it came from: "line 4", "handbook.pdf, page 2", "held-out example 7"

    @property
    def answers(self) -> list[str]:
        """Every answer that counts as right: the reference first."""
        return [a for a in [self.reference, *self.accepted] if a.strip()]


@dataclass
class EvalSet:
    items: list[EvalItem]
    problems: list[Problem] = field(default_factory=list)


def split_accepted(value: Any) -> list[str]:
    """Accepted answers from a list, or from one text with '|' between them (CSV cells)."""
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    if isinstance(value, str):
        return [part.strip() for part in value.split("|") if part.strip()]
    return []


def _item(row: Any) -> tuple[EvalItem | None, str]:
    if not isinstance(row, dict):
        return None, f"expected an object with fields, found {type(row).__name__}."
    if isinstance(row.get("messages"), list):
        turns = [t for t in row["messages"] if isinstance(t, dict)]
        users = [str(t.get("content", "")) for t in turns if t.get("role") == "user"]
        replies = [str(t.get("content", "")) for t in turns if t.get("role") == "assistant"]
        question, reference = (users or [""])[-1], (replies or [""])[-1]
    else:
        question = next((str(row[k]) for k in _QUESTION_KEYS if row.get(k)), "")
        if row.get("instruction") and row.get("input"):
            question = f"{row['instruction']}\n\n{row['input']}"
        reference = next((str(row[k]) for k in _REFERENCE_KEYS if row.get(k)), "")
    accepted = next((split_accepted(row[k]) for k in _ACCEPTED_KEYS if row.get(k)), [])
    if not question.strip():
        return None, "no question: give it a 'question' field."
    if not reference.strip() and not accepted:
        return None, "no reference answer: give it a 'reference' (or 'answer') field."
    return EvalItem(question.strip(), reference.strip(), accepted), ""


def parse_eval_set(name: str, data: bytes) -> EvalSet:
    """Questions from JSONL, JSON or CSV: 'question' with 'reference' (or 'answer'), and optional
    'accepted' answers (a list, or one text with '|' between them). Chat-style rows use their
    last question and answer. Rows with problems are listed, the others kept."""
    rows = read_rows(name, decode_text(data), CSV_COLUMNS)
    found = EvalSet([])
    for line, row in rows:
        if isinstance(row, ValueError):
            found.problems.append(Problem(line, str(row)))
            continue
        item, problem = _item(row)
        if item is None:
            found.problems.append(Problem(line, problem))
            continue
        item.origin = f"line {line}"
        found.items.append(item)
    if not found.items:
        first = f" {found.problems[0]}" if found.problems else ""
        raise InvalidInputError(f"No question could be read from the file.{first}")
    if len(found.items) > MAX_QUESTIONS:
        raise InvalidInputError(
            f"The file has {len(found.items)} questions; an evaluation takes at most "
            f"{MAX_QUESTIONS}. Split it into smaller sets."
        )
    return found


def from_rows(rows: Sequence[dict[str, Any]]) -> EvalSet:
    """Questions as a user left them in a table (fields 'question', 'reference', 'accepted'),
    under the same rules as a file; a row left wholly empty is no row, any other row that
    cannot be used is a problem named by its number."""
    found = EvalSet([])
    for number, row in enumerate(rows, 1):
        cells = {k: "" if v is None or v != v else v for k, v in row.items()}  # NaN: empty
        if not any(str(v).strip() for v in cells.values()):
            continue
        item, problem = _item(cells)
        if item is None:
            found.problems.append(Problem(number, problem))
        else:
            found.items.append(item)
    return found


# -- from a fine-tune run ----------------------------------------------------------------------
def _last_turns(messages: Sequence[Message]) -> tuple[str, str]:
    question, answer = last_turns(messages)
    return asked_question(question), answer  # a row that reads passages: its question alone


def _run_split(settings: Settings, run_id: str) -> tuple[list[list[dict[str, str]]], list[int]]:
    """A run's examples and the indices the trainer held out (the same split it used)."""
    folder = run_path(settings, run_id)
    try:
        spec = run_folder.RunSpec.load(folder)
        examples = run_folder.read_dataset(folder)
    except (OSError, ValueError, StudioError) as error:
        raise InvalidInputError(
            "The training data of this adapter cannot be read, so its held-out questions are "
            "not available."
        ) from error
    _, held_out = split(len(examples), spec.config.eval_fraction, spec.config.seed)
    return examples, held_out


def held_out_items(settings: Settings, run_id: str) -> list[EvalItem]:
    """The examples the adapter was not trained on, as questions with their reference answers."""
    examples, held_out = _run_split(settings, run_id)
    if not held_out:
        raise InvalidInputError(
            "This adapter was trained without a held-out part (its held-out share was 0), so "
            "every example was used for training. Upload questions or generate them instead."
        )
    items = []
    for index in held_out[:MAX_QUESTIONS]:
        question, answer = _last_turns(examples[index])
        if question and answer:
            items.append(EvalItem(question, answer, origin=f"held-out example {index + 1}"))
    return items


def seen_in_training(items: Sequence[EvalItem], settings: Settings, run_id: str) -> list[int]:
    """Indices of the questions the adapter was trained on (the same question, or one that
    contains it): scores on those measure memory, not learning."""
    examples, held_out = _run_split(settings, run_id)
    excluded = set(held_out)
    trained = [
        f" {normalise(m['content'])} "
        for i, example in enumerate(examples)
        if i not in excluded
        for m in example
        if m["role"] == "user"
    ]
    exact = {text.strip() for text in trained}
    found = []
    for index, item in enumerate(items):
        question = normalise(item.question)
        if question in exact or (
            len(question.split()) >= 4 and any(f" {question} " in text for text in trained)
        ):
            found.append(index)
    return found


# -- generated from the knowledge base ----------------------------------------------------------
# Facts a question can be asked about, most specific first: the answer is copied from the
# passage, so it is sure to be there; the model only writes the question.
_FACTS = [
    re.compile(r"\b[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)+\b"),  # codes: BLUE-HARBOR-42
    re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b"),  # e-mail addresses
    re.compile(r"(?<![\w:])\+?\d[\d ()-]{6,}\d\b"),  # phone numbers
    re.compile(
        r"\b\d{1,2} (?:January|February|March|April|May|June|July|August|September|October|"
        r"November|December)(?: \d{4})?\b|\b(?:January|February|March|April|May|June|July|"
        r"August|September|October|November|December) \d{1,2}(?:, \d{4})?\b"
    ),
    re.compile(r"\b\d{1,2}[:.]\d{2}\b"),  # times
    re.compile(r"(?:[$€£]\s?)?\b\d+(?:[.,]\d+)?(?:\s?%|(?:\s[a-z]+){1,2})?"),  # 45 days, 12 %
    re.compile(r"(?<=\w )(?:[A-Z][\w'-]+ ){1,3}[A-Z][\w'-]+"),  # names inside a sentence
]
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_TRAILING = {  # words that end a sentence's fact no more: "45 days after" -> "45 days"
    *("a", "an", "and", "are", "as", "at", "after", "before", "by", "each", "every", "for"),
    *("from", "in", "is", "of", "on", "or", "per", "the", "to", "was", "were", "with", "within"),
}
QUESTION_INSTRUCTIONS = (
    "Write the question that the sentence answers with the given answer. Reply with the question "
    "only."
)
_EXAMPLES = [
    ("The museum ticket costs 12 euros.", "12 euros", "How much does the museum ticket cost?"),
    ("Dr. Alma Reyes leads the research team.", "Dr. Alma Reyes", "Who leads the research team?"),
]


@dataclass(frozen=True)
class Fact:
    sentence: str
    answer: str
    citation: str


def find_fact(sentence: str) -> str:
    """The most specific fact in a sentence, or ''."""
    for pattern in _FACTS:
        for match in pattern.finditer(sentence):
            answer = match.group(0).strip(" .,;:")
            words = answer.split()
            while len(words) > 1 and words[-1].lower() in _TRAILING:
                words.pop()
            answer = " ".join(words)
            if answer and len(answer) < len(sentence) * 0.7:
                return answer
    return ""


def facts(passages: Sequence[Passage], count: int, seed: int = 0) -> list[Fact]:
    """Up to `count` facts, at most one per passage while there are passages enough, spread
    over the passages in a shuffled (seeded) order."""
    order = list(passages)
    random.Random(seed).shuffle(order)  # noqa: S311 (which passages to ask about, not a secret)
    found: list[Fact] = []
    seen: set[str] = set()
    for per_passage in (1, 3):
        for passage in order:
            taken = sum(1 for f in found if f.citation == passage.citation)
            for sentence in _SENTENCE.split(" ".join(passage.text.split())):
                if len(found) >= count or taken >= per_passage:
                    break
                answer = find_fact(sentence)
                if answer and normalise(answer) not in seen and 20 <= len(sentence) <= 400:
                    found.append(Fact(sentence, answer, passage.citation))
                    seen.add(normalise(answer))
                    taken += 1
    return found[:count]


def question_request(fact: Fact) -> ChatRequest:
    messages: list[dict[str, str]] = []
    for sentence, answer, question in [*_EXAMPLES, (fact.sentence, fact.answer, "")]:
        messages.append({"role": "user", "content": f"Sentence: {sentence}\nAnswer: {answer}"})
        if question:
            messages.append({"role": "assistant", "content": question})
    return ChatRequest(messages, QUESTION_INSTRUCTIONS)


def clean_question(text: str, answer: str) -> str:
    """The first line that reads as a question and does not give the answer away, or ''."""
    for line in text.splitlines():
        line = line.strip().removeprefix("Question:").strip()
        if line.endswith("?") and len(line) > 8 and normalise(answer) not in normalise(line):
            return line
    return ""


def knowledge_passages(kb: KnowledgeBase, limit: int = 5000) -> list[Passage]:
    """Passages of the knowledge base's complete documents to write questions about."""
    complete = {d.doc_id for d in kb.documents() if d.status == "complete"}
    stored = kb.store.get(include=["documents", "metadatas"], limit=limit)
    return [
        Passage(
            text=text,
            source=str(meta.get("source", "")),
            page=int(meta.get("page", 0) or 0),
            passage=int(meta.get("passage", 0)),
            doc_id=str(meta.get("doc_id")),
            score=0.0,
            similarity=None,
            found_by=(),
        )
        for text, meta in zip(stored["documents"], stored["metadatas"], strict=True)
        if meta.get("doc_id") in complete
    ]


def generate_questions(
    chat: ChatModel, passages: Sequence[Passage], count: int, seed: int = 0
) -> list[EvalItem]:
    """Questions about facts in the passages, written by the model in one batch. The answers
    are copied from the passages; facts the model found no question for are left out."""
    found = facts(passages, count, seed)
    if not found:
        return []
    streams = chat.stream_many(
        [question_request(fact) for fact in found],
        SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=48),
        seed=seed,
    )
    items = []
    for fact, stream in zip(found, streams, strict=True):
        question = clean_question(stream.read().text, fact.answer)
        if question:
            items.append(EvalItem(question, fact.answer, origin=fact.citation))
    return items
